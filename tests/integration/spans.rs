//! One span per request in both daemons: with `--log-json`, the line each daemon logs
//! while handling a fetch carries the request span's fields (method, host, workload,
//! credential, lease id), so the two daemons' lines of one fetch can be joined by the
//! lease id. No line carries the credential itself.

use leash_tests::{Cluster, Options};

use crate::basic;

/// The JSON log lines of `log` whose request span has `lease_id` = `lease`.
fn lines_with_lease(log: &str, lease: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(|v| v["span"]["lease_id"].as_str() == Some(lease))
        .collect()
}

#[test]
fn a_fetch_is_logged_by_both_daemons_with_its_lease_id() {
    let c = Cluster::with(Options::default().log_json());
    basic(&c);
    let got = c.get("api", &[]);
    assert!(!got.cached);
    let token = c.leash(&["get", "api"]).ok();

    let cp = lines_with_lease(&c.control_plane_log(), &got.lease_id);
    let issued = cp
        .iter()
        .find(|v| v["fields"]["message"] == "issued")
        .unwrap_or_else(|| {
            panic!(
                "no control-plane line carries the lease id\n{}",
                c.logs_dump()
            )
        });
    let span = &issued["span"];
    assert_eq!(span["name"], "request");
    assert_eq!(span["method"], "/leash.v1.ControlPlane/Issue", "{issued}");
    assert_eq!(span["workload"], "ci/job", "{issued}");
    assert_eq!(span["credential"], "api", "{issued}");
    assert_eq!(span["host"], "host-1", "{issued}");

    let agent = lines_with_lease(&c.agent_log("host-1"), &got.lease_id);
    let fetched = agent
        .iter()
        .find(|v| v["fields"]["message"] == "fetched from the control plane")
        .unwrap_or_else(|| panic!("no agent line carries the lease id\n{}", c.logs_dump()));
    let span = &fetched["span"];
    assert_eq!(span["method"], "/leash.v1.Agent/Fetch", "{fetched}");
    assert_eq!(span["workload"], "ci/job", "{fetched}");
    assert_eq!(span["credential"], "api", "{fetched}");
    assert_eq!(span["host"], "host-1", "{fetched}");

    // Names and ids only: the token is in no line of either daemon.
    let token = token.trim();
    assert!(token.len() > 20, "{token:?}");
    assert!(!c.control_plane_log().contains(token));
    assert!(!c.agent_log("host-1").contains(token));
}

/// A fetch over the agent's HTTP API runs in a request span too: its path is the span's
/// method, and the lease id joins it to the control plane's line.
#[test]
fn a_fetch_over_the_agents_http_api_is_logged_in_its_request_span() {
    let c = Cluster::with(Options::default().log_json());
    basic(&c);
    let (status, doc) = crate::agent_http::curl(&c, "/v1/credentials/api");
    assert_eq!(status, 200, "{doc}");
    let lease = doc["lease_id"].as_str().expect("lease_id").to_string();
    let agent = lines_with_lease(&c.agent_log("host-1"), &lease);
    let fetched = agent
        .iter()
        .find(|v| v["fields"]["message"] == "fetched from the control plane")
        .unwrap_or_else(|| panic!("no agent line carries the lease id\n{}", c.logs_dump()));
    assert_eq!(fetched["span"]["name"], "request", "{fetched}");
    assert_eq!(
        fetched["span"]["method"], "/v1/credentials/api",
        "{fetched}"
    );
    assert_eq!(fetched["span"]["workload"], "ci/job", "{fetched}");
    assert!(!lines_with_lease(&c.control_plane_log(), &lease).is_empty());
}

/// An admin's revocation of a lease is logged in the Revoke call's span, with the
/// lease's id, workload, credential and host.
#[test]
fn an_admin_revocation_is_logged_with_the_lease_it_names() {
    let c = Cluster::with(Options::default().log_json());
    basic(&c);
    let got = c.get("api", &[]);
    c.leashctl(&["revoke", "--lease", &got.lease_id]).ok();
    let lines = c.eventually("the revocation is logged", || {
        let l = lines_with_lease(&c.control_plane_log(), &got.lease_id);
        l.iter()
            .any(|v| v["fields"]["message"] == "revoked")
            .then_some(l)
    });
    let revoked = lines
        .iter()
        .find(|v| v["fields"]["message"] == "revoked")
        .expect("the line");
    let span = &revoked["span"];
    assert_eq!(span["method"], "/leash.v1.Admin/Revoke", "{revoked}");
    assert_eq!(span["workload"], "ci/job", "{revoked}");
    assert_eq!(span["credential"], "api", "{revoked}");
    assert_eq!(span["host"], "host-1", "{revoked}");
}
