//! Remote administration: admin certificates issued as one-time codes, redeemed with
//! `leashctl login`, and used with `leashctl --server` over mutual TLS on the agent
//! port; roles; revoked, replaced, expired and reused credentials; host and admin
//! certificates kept to their own services; the audit trail naming who did what, with
//! which role, over which connection.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leash_agentd::identity;
use leash_agentd::tls::{self, Trust};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use leash_tests::{bin, Cluster, Output};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{cp_client, host_credentials};

/// An admin logged in on their own "workstation" (a config dir of their own).
struct Admin {
    home: PathBuf,
}

impl Admin {
    fn dir(&self) -> PathBuf {
        self.home.join(".config").join("leash")
    }

    fn file(&self, ext: &str) -> PathBuf {
        let mut found = std::fs::read_dir(self.dir())
            .expect("config dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(ext))
            .collect::<Vec<_>>();
        assert_eq!(found.len(), 1, "one *{ext} in {:?}", self.dir());
        found.remove(0)
    }

    /// `leashctl` as this admin, with no local socket in reach.
    fn command(&self) -> Command {
        let mut cmd = Command::new(bin("leashctl"));
        cmd.env_remove("LEASH_ADMIN_SOCKET")
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env("XDG_RUNTIME_DIR", self.home.join("run"));
        cmd
    }

    /// `leashctl --server … --cert … --key … --ca … ARGS`.
    fn run(&self, c: &Cluster, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.arg("--server")
            .arg(format!("https://{}", c.addr))
            .arg("--cert")
            .arg(self.file(".crt"))
            .arg("--key")
            .arg(self.file(".key"))
            .arg("--ca")
            .arg(self.dir().join("ca.pem"))
            .args(args);
        c.run(cmd)
    }

    fn cert_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = CertificateDer::pem_file_iter(self.file(".crt"))
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert pem");
        let key = PrivateKeyDer::from_pem_file(self.file(".key")).expect("key pem");
        (chain, key)
    }
}

fn issue(c: &Cluster, name: &str, role: &str, ttl: &str) -> String {
    let code = c
        .leashctl(&[
            "admin-cert",
            "issue",
            "--name",
            name,
            "--role",
            role,
            "--ttl",
            ttl,
        ])
        .ok();
    // The secret part (the name and the CA pin are not secret).
    c.remember_secret(code.rsplit('.').nth(1).expect("a code has a secret part"));
    code
}

/// `leashctl login` in a fresh home for `name`.
fn login(c: &Cluster, name: &str, code: &str) -> (Admin, Output) {
    let home = c.dir().join(format!("home-{name}"));
    std::fs::create_dir_all(&home).expect("home");
    let a = Admin { home };
    let mut cmd = a.command();
    cmd.args([
        "login",
        "--server",
        &format!("https://{}", c.addr),
        "--code",
        code,
    ]);
    let out = c.run(cmd);
    (a, out)
}

fn logged_in(c: &Cluster, name: &str, role: &str, ttl: &str) -> Admin {
    let code = issue(c, name, role, ttl);
    let (a, out) = login(c, name, &code);
    out.code(0);
    a
}

#[test]
fn issue_login_and_remote_commands_with_a_profile_and_flags() {
    let c = Cluster::control_plane_only();
    let code = issue(&c, "ann", "admin", "8h");
    assert!(code.starts_with("leash-admin.v1.ann."), "{code}");
    let (ann, out) = login(&c, "ann", &code);
    out.code(0);
    // What was written is named; the key is not printed.
    assert!(out.stderr.contains("private key, mode 0600"), "{out}");
    assert!(!out.stdout.contains("PRIVATE KEY") && !out.stderr.contains("PRIVATE KEY"));
    let key = ann.file(".key");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key.display());
    // The private key stays on the workstation: in no log, nothing the control plane stores.
    let pem = std::fs::read_to_string(&key).expect("key");
    let body = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    c.remember_secret(&body);
    let profile = std::fs::read_to_string(ann.dir().join("leashctl.toml")).expect("profile");
    assert!(
        profile.contains(&format!("https://{}", c.addr)),
        "{profile}"
    );

    // A remote command with explicit flags.
    c.leashctl(&[
        "workload",
        "add",
        "svc",
        "--owner",
        "team",
        "--selector",
        "unix:uid:0",
    ])
    .code(0);
    let out = ann.run(&c, &["workload", "list", "--output", "json"]);
    assert!(out.json().to_string().contains("\"svc\""), "{out}");
    // And with the profile alone.
    let mut cmd = ann.command();
    cmd.arg("--profile")
        .arg(ann.dir().join("leashctl.toml"))
        .args(["admin-cert", "list", "--output", "json"]);
    let listed = c.run(cmd).json();
    let me = listed
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "ann"))
        .cloned()
        .expect("ann is listed");
    assert_eq!(
        (me["role"].as_str(), me["state"].as_str()),
        (Some("admin"), Some("active"))
    );
    // With no flags and no local socket, the default profile is used.
    if !Path::new(leash_proto::socket_trust::SYSTEM_ADMIN_SOCKET).exists() {
        let mut cmd = ann.command();
        cmd.args(["workload", "list", "--output", "json"]);
        let out = c.run(cmd);
        assert!(out.json().to_string().contains("\"svc\""), "{out}");
    }
    // $XDG_CONFIG_HOME is honoured.
    let xdg = c.dir().join("xdg-bea");
    let bea = issue(&c, "bea", "viewer", "1h");
    let mut cmd = ann.command();
    cmd.env("XDG_CONFIG_HOME", &xdg).args([
        "login",
        "--server",
        &format!("https://{}", c.addr),
        "--code",
        &bea,
    ]);
    c.run(cmd).code(0);
    assert!(xdg.join("leash").join("admin-bea.key").exists());
    assert!(xdg.join("leash").join("leashctl.toml").exists());

    // A code is single use.
    let (_, again) = login(&c, "ann-again", &code);
    again.code(2);
    assert!(again.stderr.contains("already used"), "{again}");

    // The audit names the admin, their role and how they connected.
    ann.run(&c, &["workload", "disable", "svc"]).code(0);
    let events = c.audit();
    let by = |kind: &str, actor: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind && e["actor"] == actor)
            .unwrap_or_else(|| panic!("no {kind} by {actor}: {events:#?}"))
            .clone()
    };
    let disabled = events
        .iter()
        .rev()
        .find(|e| e["actor"] == "ann" && e["type"] != "admin-login")
        .expect("an event by ann");
    assert_eq!(disabled["actor_role"], "admin", "{disabled}");
    assert_eq!(disabled["actor_via"], "mtls", "{disabled}");
    let issued = by(
        "admin-cert-issued",
        events[0]["actor"].as_str().unwrap_or("root"),
    );
    assert_eq!(issued["actor_via"], "socket", "{issued}");
    assert_eq!(issued["actor_role"], "admin", "{issued}");
    let login_ev = by("admin-login", "ann");
    assert_eq!(login_ev["actor_via"], "mtls", "{login_ev}");
    c.assert_no_secret_leaked();
}

/// Each role may run what it needs and is refused, with exit 2, what is above it.
#[test]
fn each_role_is_refused_each_command_outside_it() {
    let c = Cluster::control_plane_only();
    let admins: Vec<(&str, Admin)> = ["viewer", "approver", "operator", "admin"]
        .into_iter()
        .map(|r| (r, logged_in(&c, &format!("a-{r}"), r, "1h")))
        .collect();
    let rank = |r: &str| {
        ["viewer", "approver", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
    };
    // (the least role that may run it, the command); allowed runs fail later, not with
    // 2, since the names do not exist (or succeed).
    let table: &[(&str, &[&str])] = &[
        ("viewer", &["host", "list"]),
        ("viewer", &["workload", "list"]),
        ("viewer", &["admin-cert", "list"]),
        ("viewer", &["audit", "tail", "--lines", "5"]),
        (
            "approver",
            &["approval", "deny", "ap-none", "--reason", "no"],
        ),
        ("approver", &["approval", "approve", "ap-none"]),
        ("operator", &["host", "evict", "no-such-host"]),
        ("operator", &["workload", "disable", "no-such-workload"]),
        (
            "operator",
            &["revoke", "--workload", "no-such-workload", "--reason", "r"],
        ),
        ("admin", &["workload", "remove", "no-such-workload"]),
        ("admin", &["credential", "remove", "no-such-credential"]),
        ("admin", &["join-token", "create"]),
        (
            "admin",
            &["admin-cert", "issue", "--name", "x", "--role", "viewer"],
        ),
        ("admin", &["admin-cert", "revoke", "no-such-admin"]),
        ("viewer", &["key", "list"]),
        (
            "admin",
            &["introspection-client", "remove", "no-such-client"],
        ),
    ];
    for (needed, args) in table {
        for (role, a) in &admins {
            let out = a.run(&c, args);
            if rank(role) < rank(needed) {
                assert_eq!(out.code, 2, "{role} must be refused {args:?}\n{out}");
                assert!(
                    out.stderr.contains(&format!("has the role {role}"))
                        && out.stderr.contains("needs the role"),
                    "{out}"
                );
            } else {
                assert_ne!(out.code, 2, "{role} may run {args:?}\n{out}");
            }
        }
    }
    // Refusals are audited with who asked, in which role, over which connection.
    c.eventually("the refusals are in the audit trail", || {
        c.audit()
            .iter()
            .any(|e| {
                e["type"] == "denied"
                    && e["actor_role"] == "viewer"
                    && e["actor_via"] == "mtls"
                    && e["detail"]["method"] == "CreateJoinToken"
            })
            .then_some(())
    });
}

#[test]
fn revoked_replaced_and_expired_certificates_are_refused_on_their_next_call() {
    let c = Cluster::control_plane_only();
    let vic = logged_in(&c, "vic", "viewer", "8h");
    let opi = logged_in(&c, "opi", "operator", "10m");
    let rex = logged_in(&c, "rex", "viewer", "8h");
    vic.run(&c, &["host", "list"]).code(0);
    opi.run(&c, &["host", "list"]).code(0);
    rex.run(&c, &["host", "list"]).code(0);

    c.leashctl(&["admin-cert", "revoke", "vic"]).code(0);
    let out = vic.run(&c, &["host", "list"]);
    out.code(2);
    assert!(out.stderr.contains("revoked"), "{out}");

    // A new code for a name replaces its certificate.
    issue(&c, "rex", "viewer", "8h");
    let out = rex.run(&c, &["host", "list"]);
    out.code(2);
    assert!(out.stderr.contains("not the current one"), "{out}");

    c.advance_clock(Duration::from_secs(11 * 60));
    let out = opi.run(&c, &["host", "list"]);
    out.code(2);
    assert!(out.stderr.contains("expired"), "{out}");
    // An unredeemed code expires too.
    let code = issue(&c, "late", "viewer", "1h");
    c.advance_clock(Duration::from_secs(16 * 60));
    let (_, out) = login(&c, "late", &code);
    out.code(2);
    assert!(out.stderr.contains("expired"), "{out}");
}

#[test]
fn host_certificates_and_admin_certificates_keep_to_their_own_services() {
    let c = Cluster::control_plane_only();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ann = logged_in(&c, "ann", "admin", "1h");

    // A host's certificate on the admin service.
    let token = c.join_token(&["--name", "h1"]);
    let state = c.dir().join("raw-h1");
    identity::prepare_state_dir(&state).expect("state dir");
    rt.block_on(identity::enroll(
        &state,
        &[c.addr.to_string()],
        &token,
        None,
        None,
        BTreeMap::new(),
    ))
    .expect("the test host enrolls");
    let host = host_credentials(&state);
    let err = rt
        .block_on(async {
            let cfg = tls::client_config(Trust::Pin(c.ca_pin.clone()), Some(host))?;
            let ch = tls::connect(&[c.addr.to_string()], cfg).await?;
            Ok::<_, tls::TlsError>(AdminClient::new(ch).list_hosts(v1::Empty {}).await)
        })
        .expect("TLS with the host certificate")
        .expect_err("a host certificate is refused on the admin service");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("host certificate"), "{err:?}");

    // An admin certificate on the agent service.
    let err = rt
        .block_on(async {
            let mut cp = cp_client(&c, Some(ann.cert_and_key())).await?;
            Ok::<_, tls::TlsError>(
                cp.renew(v1::RenewRequest {
                    csr_der: Vec::new(),
                })
                .await,
            )
        })
        .expect("TLS with the admin certificate")
        .expect_err("an admin certificate is refused on the agent service");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("admin certificate"), "{err:?}");

    // And no certificate at all on the admin service.
    let err = rt
        .block_on(async {
            let cfg = tls::client_config(Trust::Pin(c.ca_pin.clone()), None)?;
            let ch = tls::connect(&[c.addr.to_string()], cfg).await?;
            Ok::<_, tls::TlsError>(AdminClient::new(ch).list_hosts(v1::Empty {}).await)
        })
        .expect("TLS without a certificate")
        .expect_err("no certificate, no admin service");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

/// `[admins]` entries carry a role on the local socket too, recorded with `via` socket.
#[test]
#[ignore = "needs root: runs leashctl as uid 65534 with setpriv"]
fn a_local_admin_with_a_role_is_held_to_it_on_the_socket() {
    leash_tests::require_root();
    let c = Cluster::with(
        leash_tests::Options::default()
            .no_agent()
            .config("[admins]\nroot = 0\nvee = { uid = 65534, role = \"viewer\" }"),
    );
    let dir = c.admin_socket.parent().expect("socket dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&c.admin_socket, std::fs::Permissions::from_mode(0o777))
        .expect("chmod socket");
    let ctl = c.copy_for_other_uids("leashctl");
    let vee = |args: &[&str]| {
        let mut cmd = leash_tests::as_nobody(&ctl);
        cmd.arg("--admin-socket").arg(&c.admin_socket).args(args);
        c.run(cmd)
    };
    c.leashctl(&[
        "workload",
        "add",
        "svc",
        "--owner",
        "team",
        "--selector",
        "unix:uid:4242",
    ])
    .code(0);
    vee(&["workload", "list"]).code(0);
    let out = vee(&["workload", "disable", "svc"]);
    out.code(2);
    assert!(
        out.stderr.contains("vee has the role viewer")
            && out.stderr.contains("needs the role operator"),
        "{out}"
    );
    c.leashctl(&["workload", "disable", "svc"]).code(0);
    let disabled = c
        .audit()
        .into_iter()
        .find(|e| e["type"] == "disabled")
        .expect("a disabled event");
    assert_eq!(disabled["actor"], "root", "{disabled}");
    assert_eq!(disabled["actor_role"], "admin", "{disabled}");
    assert_eq!(disabled["actor_via"], "socket", "{disabled}");
}

/// Across a CA rotation, an admin certificate from the old CA still works while that CA
/// is in the bundle, and one issued after it, by the new CA, works too.
#[test]
fn admin_certificates_verify_while_their_ca_is_in_the_bundle() {
    let c = Cluster::control_plane_only();
    let ann = logged_in(&c, "ann", "admin", "8h");
    let new = c
        .leashctl(&["key", "rotate", "ca", "--output", "json"])
        .json()["id"]
        .as_str()
        .expect("new CA id")
        .to_string();
    // Past the publish-ahead time (10 minutes by default): the new CA signs.
    c.advance_clock(Duration::from_secs(601));
    c.eventually("the new CA is active", || {
        let keys = c.leashctl(&["key", "list", "--output", "json"]).json();
        keys.as_array()?
            .iter()
            .any(|k| k["id"] == new.as_str() && k["state"] == "active")
            .then_some(())
    });
    ann.run(&c, &["host", "list"]).code(0);
    let bob = logged_in(&c, "bob", "viewer", "1h");
    let ca_pem = std::fs::read_to_string(bob.dir().join("ca.pem")).expect("ca.pem");
    assert_eq!(ca_pem.matches("BEGIN CERTIFICATE").count(), 2, "{ca_pem}");
    bob.run(&c, &["host", "list"]).code(0);
}
