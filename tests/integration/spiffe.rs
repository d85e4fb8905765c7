//! The SPIFFE Workload API on the agent socket, driven by clients nobody here wrote: the
//! Rust `spiffe` crate (`WorkloadApiClient`, `X509Source`, `JwtSource`) and the Python
//! `spiffe` package. JWT-SVIDs with one and several audiences and their validation;
//! X.509-SVIDs, mutual TLS between two workloads with them, a revocation while the
//! stream is open; the security header; SVIDs fetched inside a `leash exec` task.

use std::sync::Arc;
use std::time::Duration;

use leash_proto::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use leash_proto::spiffe::{JwtsvidRequest, X509svidRequest};
use leash_tests::{python, Cluster, TRUST_DOMAIN};
use spiffe::{JwtSource, WorkloadApiClient, X509Source};

use crate::claims;

const JWT_CRED: &str = "spiffe-jwt";
const X509_CRED: &str = "spiffe-x509";
const AUD_A: &str = "https://a.spiffe.example";
const AUD_B: &str = "https://b.spiffe.example";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn endpoint(c: &Cluster) -> String {
    format!("unix://{}", c.agent(0).socket.display())
}

fn id(workload: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{workload}")
}

/// A cluster with the JWT-SVID credential (two audiences) and workload `w` for this
/// process.
fn jwt_cluster(w: &str) -> Cluster {
    let c = Cluster::start();
    c.credential(JWT_CRED, &["--audience", AUD_A, "--audience", AUD_B]);
    c.my_workload(w, "team-s", &[JWT_CRED]);
    c
}

/// A cluster with both SVID credentials and the given workloads for this process.
fn svid_cluster(workloads: &[&str]) -> Cluster {
    let c = Cluster::start();
    c.credential(JWT_CRED, &["--audience", AUD_A, "--audience", AUD_B]);
    c.leashctl(&[
        "credential",
        "add",
        X509_CRED,
        "--kind",
        "x509",
        "--owner",
        "team-s",
    ])
    .ok();
    for w in workloads {
        c.my_workload(w, "team-s", &[JWT_CRED, X509_CRED]);
    }
    c
}

#[test]
fn jwt_svids_from_the_rust_spiffe_crate_with_one_and_several_audiences() {
    let c = jwt_cluster("svc");
    let rt = rt();
    let (one, two, again) = rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        let one = client
            .fetch_jwt_svid(&[AUD_A], None)
            .await
            .expect("one audience");
        let two = client
            .fetch_jwt_svid(&[AUD_B, AUD_A], None)
            .await
            .expect("two audiences");
        let again = client.fetch_jwt_svid(&[AUD_A], None).await.expect("again");
        (one, two, again)
    });
    assert_eq!(one.spiffe_id().to_string(), id("svc"));
    let cl = claims(one.token());
    assert_eq!(cl["sub"], id("svc"));
    assert_eq!(cl["aud"], AUD_A, "one audience is a string: {cl}");
    assert!(cl["exp"].as_i64().unwrap_or(0) > cl["iat"].as_i64().unwrap_or(i64::MAX));
    let cl2 = claims(two.token());
    let mut auds: Vec<String> = cl2["aud"]
        .as_array()
        .unwrap_or_else(|| panic!("several audiences are an array: {cl2}"))
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    auds.sort();
    assert_eq!(auds, vec![AUD_A.to_string(), AUD_B.to_string()]);
    assert_eq!(
        claims(again.token())["jti"],
        cl["jti"],
        "the second fetch is served from the agent's cache"
    );
    // The SVID is a lease like any other credential.
    let lease = c.lease(cl["jti"].as_str().unwrap_or_default());
    assert_eq!(lease["workload"], "svc", "{lease}");
    assert_eq!(lease["credential"], JWT_CRED, "{lease}");
    // An audience the credential does not list is refused, naming the ones it does.
    let refused = rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        client
            .fetch_jwt_svid(&["https://nope.example"], None)
            .await
            .expect_err("unlisted audience")
    });
    let shown = format!("{refused:?}");
    assert!(shown.contains("InvalidArgument"), "{shown}");
    assert!(shown.contains(AUD_A) && shown.contains(AUD_B), "{shown}");
}

#[test]
fn the_security_header_is_required_and_a_caller_without_a_workload_is_denied() {
    let c = jwt_cluster("svc");
    let rt = rt();
    let (missing, with_header) = rt.block_on(async {
        let ch = leash_proto::uds::connect(&c.agent(0).socket)
            .await
            .expect("connect");
        let mut raw = SpiffeWorkloadApiClient::new(ch);
        let req = || JwtsvidRequest {
            audience: vec![AUD_A.into()],
            spiffe_id: String::new(),
        };
        let missing = raw.fetch_jwtsvid(req()).await.expect_err("no header");
        let mut stream_missing = raw.fetch_x509svid(X509svidRequest {}).await;
        let x509_missing = match &mut stream_missing {
            Err(s) => s.code(),
            Ok(s) => match s.get_mut().message().await {
                Err(s) => s.code(),
                Ok(m) => panic!("an X.509 stream without the header answered {m:?}"),
            },
        };
        assert_eq!(x509_missing, tonic::Code::InvalidArgument);
        let mut with = tonic::Request::new(req());
        with.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().expect("header"));
        let with_header = raw.fetch_jwtsvid(with).await;
        (missing, with_header)
    });
    assert_eq!(missing.code(), tonic::Code::InvalidArgument, "{missing:?}");
    assert!(
        missing.message().contains("workload.spiffe.io"),
        "{missing:?}"
    );
    let svids = with_header.expect("with the header").into_inner().svids;
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0].spiffe_id, id("svc"));
    // Another uid matches no workload: PermissionDenied, as the specification says.
    c.leashctl(&["workload", "remove", "svc"]).ok();
    let denied = c.eventually("the workload is gone from the agent", || {
        rt.block_on(async {
            let client = WorkloadApiClient::connect_to(endpoint(&c)).await.ok()?;
            client.fetch_jwt_svid(&[AUD_A], None).await.err()
        })
    });
    assert!(
        format!("{denied:?}").contains("PermissionDenied"),
        "{denied:?}"
    );
}

#[test]
fn jwt_bundles_and_validation_through_the_rust_spiffe_crate() {
    let c = jwt_cluster("svc");
    let rt = rt();
    rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        let svid = client.fetch_jwt_svid(&[AUD_A], None).await.expect("svid");
        let bundles = client.fetch_jwt_bundles().await.expect("bundles");
        let td = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("td");
        let bundle = bundles.get(&td).expect("a bundle for the trust domain");
        let kid = {
            let h = svid.token().split('.').next().unwrap_or_default();
            use base64::Engine;
            let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .expect("header");
            let h: serde_json::Value = serde_json::from_slice(&h).expect("header json");
            h["kid"].as_str().unwrap_or_default().to_string()
        };
        assert!(
            bundle.find_jwt_authority(&kid).is_some(),
            "the token's kid {kid} is in the bundle"
        );
        let ok = client
            .validate_jwt_token(AUD_A, svid.token())
            .await
            .expect("valid for its audience");
        assert_eq!(ok.spiffe_id().to_string(), id("svc"));
        let wrong = client
            .validate_jwt_token(AUD_B, svid.token())
            .await
            .expect_err("not for another audience");
        assert!(
            format!("{wrong:?}").contains("InvalidArgument"),
            "{wrong:?}"
        );
        let mut forged = svid.token().to_string();
        forged.pop();
        forged.push(if svid.token().ends_with('A') {
            'B'
        } else {
            'A'
        });
        assert!(client.validate_jwt_token(AUD_A, &forged).await.is_err());

        // JwtSource: the same, kept up to date in the background.
        let source = JwtSource::builder()
            .endpoint(endpoint(&c))
            .build()
            .await
            .expect("jwt source");
        let s = source.fetch_jwt_svid([AUD_B]).await.expect("source svid");
        assert_eq!(s.spiffe_id().to_string(), id("svc"));
        assert!(source.bundle_set().expect("bundle set").get(&td).is_some());
        source.shutdown().await;
    });
}

#[test]
fn bundle_streams_send_the_new_keys_when_they_rotate() {
    use futures::StreamExt;
    let c = jwt_cluster("svc");
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("td");
    let rt = rt();
    rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        let mut jwt = client.stream_jwt_bundles().await.expect("jwt stream");
        let mut x509 = client.stream_x509_bundles().await.expect("x509 stream");
        let first = jwt.next().await.expect("message").expect("bundle");
        let keys =
            |b: &spiffe::JwtBundleSet| b.get(&td).map(|b| b.jwt_authorities().count()).unwrap_or(0);
        assert_eq!(keys(&first), 1);
        let cas = x509.next().await.expect("message").expect("bundle");
        assert_eq!(cas.get(&td).expect("bundle").authorities().len(), 1);
        // A new JWT key is published at once: the JWT bundle stream sends both keys.
        c.leashctl(&["key", "rotate", "jwt"]).ok();
        let next = tokio::time::timeout(Duration::from_secs(10), jwt.next())
            .await
            .expect("a new JWT bundle within 10s of the rotation")
            .expect("message")
            .expect("bundle");
        assert_eq!(keys(&next), 2, "old and new key");
        // A new CA: the X.509 bundle stream carries both during the overlap.
        c.leashctl(&["key", "rotate", "ca"]).ok();
        let next = tokio::time::timeout(Duration::from_secs(10), x509.next())
            .await
            .expect("a new X.509 bundle within 10s of the rotation")
            .expect("message")
            .expect("bundle");
        assert_eq!(next.get(&td).expect("bundle").authorities().len(), 2);
    });
}

/// The URI SAN of a DER certificate.
fn uri_san(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                out.push(u.to_string());
            }
        }
    }
    out
}

#[test]
fn x509_svids_from_the_rust_spiffe_crate_and_a_revocation_on_the_open_stream() {
    let c = svid_cluster(&["svc"]);
    let rt = rt();
    let source = rt.block_on(async {
        X509Source::builder()
            .endpoint(endpoint(&c))
            .build()
            .await
            .expect("x509 source")
    });
    let svid = source.svid().expect("svid");
    assert_eq!(svid.spiffe_id().to_string(), id("svc"));
    let leaf = svid.leaf().as_bytes().to_vec();
    assert_eq!(uri_san(&leaf), vec![id("svc")], "URI SAN = the SPIFFE ID");
    // The SVID's private key is served only through the SPIFFE Workload API: Leash's
    // own Fetch of the x509 credential is refused and prints nothing.
    let out = c.leash(&["get", X509_CRED]);
    out.code(1).stderr_has(&["SPIFFE"]);
    assert!(out.stdout.trim().is_empty(), "{out}");
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("td");
    let bundle = source
        .bundle_set()
        .expect("bundle set")
        .get(&td)
        .expect("a bundle for the trust domain");
    assert!(!bundle.authorities().is_empty());

    // Revoke every lease of the workload while the stream is open: the source gets an
    // update without the revoked SVID (a new one, as policy still permits it).
    let mut updates = source.updated();
    c.leashctl(&["revoke", "--workload", "svc", "--wait", "--timeout", "10s"])
        .ok();
    let renewed = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                updates.changed().await.expect("update");
                let s = source.svid().expect("svid");
                if s.leaf().as_bytes() != leaf.as_slice() {
                    return s;
                }
            }
        })
        .await
        .expect("an update within 10s of the revocation")
    });
    assert_eq!(renewed.spiffe_id().to_string(), id("svc"));

    // Disabled: no SVID at all any more; the stream ends with PermissionDenied.
    let raw = rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        client.stream_x509_svids().await.expect("stream")
    });
    c.leashctl(&["workload", "disable", "svc", "--reason", "test"])
        .ok();
    rt.block_on(async {
        use futures::StreamExt;
        let mut raw = raw;
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match raw.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return format!("{e:?}"),
                    None => return "ended".to_string(),
                }
            }
        })
        .await
        .expect("the stream ends within 10s of disabling");
        assert!(end.contains("PermissionDenied") || end == "ended", "{end}");
        source.shutdown().await;
    });
}

#[test]
fn an_x509_svid_is_renewed_at_half_life_and_pushed_on_the_open_stream() {
    use futures::StreamExt;
    let c = Cluster::start();
    c.leashctl(&[
        "credential",
        "add",
        X509_CRED,
        "--kind",
        "x509",
        "--owner",
        "team-s",
        "--ttl",
        "2m",
    ])
    .ok();
    c.my_workload("svc", "team-s", &[X509_CRED]);
    let rt = rt();
    rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        let mut stream = client.stream_x509_svids().await.expect("stream");
        let first = stream.next().await.expect("a message").expect("an svid");
        let leaf = first.leaf().as_bytes().to_vec();
        // Before half its life: nothing new.
        c.advance_clock(Duration::from_secs(50));
        let early = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await;
        assert!(early.is_err(), "a message before half life");
        // Past half its life: a new SVID arrives on the same stream.
        c.advance_clock(Duration::from_secs(15));
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a renewed SVID within 10s")
            .expect("a message")
            .expect("an svid");
        assert_ne!(next.leaf().as_bytes(), leaf.as_slice(), "a new certificate");
        assert_eq!(next.spiffe_id().to_string(), id("svc"));
    });
}

/// A rustls verifier for X.509-SVIDs: the chain must lead to the bundle, and the peer's
/// URI SAN must be the expected SPIFFE ID (there is no DNS name to check).
mod svid_tls {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    pub struct Verifier {
        pub roots: Arc<rustls::RootCertStore>,
        pub expect: String,
        pub provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _name: &ServerName<'_>,
            _ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let cert = webpki::EndEntityCert::try_from(end_entity)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            cert.verify_for_usage(
                self.provider.signature_verification_algorithms.all,
                &self.roots.roots,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            if super::uri_san(end_entity) != vec![self.expect.clone()] {
                return Err(rustls::Error::General(format!(
                    "the peer is not {}",
                    self.expect
                )));
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

#[test]
fn two_workloads_do_mutual_tls_with_their_x509_svids_and_check_each_others_id() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    // Both workloads match this process: FetchX509SVID serves one SVID for each.
    let c = svid_cluster(&["alpha", "beta"]);
    let rt = rt();
    let svids = rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        client.fetch_all_x509_svids().await.expect("svids")
    });
    let mut ids: Vec<String> = svids.iter().map(|s| s.spiffe_id().to_string()).collect();
    ids.sort();
    assert_eq!(ids, vec![id("alpha"), id("beta")]);
    let by_id = |want: &str| {
        svids
            .iter()
            .find(|s| s.spiffe_id().to_string() == want)
            .expect("svid")
    };
    let bundle = rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        client.fetch_x509_bundles().await.expect("bundles")
    });
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("td");
    let mut roots = rustls::RootCertStore::empty();
    for ca in bundle.get(&td).expect("bundle").authorities() {
        roots
            .add(CertificateDer::from(ca.as_bytes().to_vec()))
            .expect("CA");
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let identity = |s: &spiffe::X509Svid| {
        let chain: Vec<CertificateDer<'static>> = s
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            s.private_key().as_bytes().to_vec(),
        ));
        (chain, key)
    };
    let (srv_chain, srv_key) = identity(by_id(&id("alpha")));
    let (cli_chain, cli_key) = identity(by_id(&id("beta")));
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(srv_chain, srv_key)
        .expect("server config");
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(svid_tls::Verifier {
            roots: roots.clone(),
            expect: id("alpha"),
            provider: provider.clone(),
        }))
        .with_client_auth_cert(cli_chain, cli_key)
        .expect("client config");
    let server = Arc::new(server);
    let (peer_of_server, reply) = rt
        .block_on(handshake(server.clone(), client))
        .expect("mutual TLS between alpha and beta");
    assert_eq!(&reply, b"pong!");
    assert_eq!(peer_of_server, vec![id("beta")], "the server saw beta");

    // A client that expects someone else refuses alpha's certificate.
    let (cli_chain, cli_key) = identity(by_id(&id("beta")));
    let wrong = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(svid_tls::Verifier {
            roots,
            expect: id("gamma"),
            provider,
        }))
        .with_client_auth_cert(cli_chain, cli_key)
        .expect("client config");
    let err = rt
        .block_on(handshake(server, wrong))
        .expect_err("the wrong peer is refused");
    assert!(err.contains("is not"), "{err}");
}

/// One TLS connection on loopback: the client sends `ping!`, the server answers `pong!`.
/// Returns the client certificate's URI SANs as the server saw them, and the reply.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: rustls::ClientConfig,
) -> Result<(Vec<String>, [u8; 5]), String> {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| uri_san(c))
            .unwrap_or_default();
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong!").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(peer)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("alpha.svid").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string());
    let mut reply = [0u8; 5];
    let r = match &mut tls {
        Ok(tls) => {
            tls.write_all(b"ping!").await.map_err(|e| e.to_string())?;
            tls.read_exact(&mut reply).await.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.clone()),
    };
    if let Err(e) = r {
        srv.abort();
        return Err(e);
    }
    let peer = srv.await.map_err(|e| e.to_string())??;
    Ok((peer, reply))
}

/// The Python `spiffe` package: JWT-SVID, X.509-SVID and validation, with default
/// options (its gRPC channel sends the socket path as `:authority`).
const PY_CLIENT: &str = r#"
import json, sys
from spiffe import WorkloadApiClient
aud = sys.argv[1]
with WorkloadApiClient() as client:
    jwt = client.fetch_jwt_svid(audience={aud})
    x509 = client.fetch_x509_svid()
    ok = client.validate_jwt_svid(jwt.token, aud)
    try:
        client.validate_jwt_svid(jwt.token, "https://other.example")
        wrong = "accepted"
    except Exception as e:
        wrong = type(e).__name__
    print(json.dumps({
        "jwt_id": str(jwt.spiffe_id),
        "jwt_aud": sorted(jwt.audience),
        "x509_id": str(x509.spiffe_id),
        "x509_chain": len(x509.cert_chain),
        "validated": str(ok.spiffe_id),
        "wrong_audience": wrong,
    }))
"#;

#[test]
fn the_python_spiffe_package_fetches_and_validates() {
    let c = svid_cluster(&["py"]);
    let ep = endpoint(&c);
    let out = python::run_script(
        PY_CLIENT,
        &[AUD_A],
        &[("SPIFFE_ENDPOINT_SOCKET", ep.as_str())],
        Duration::from_secs(60),
    );
    let v = out.json();
    assert_eq!(v["jwt_id"], id("py"), "{v}");
    assert_eq!(v["jwt_aud"], serde_json::json!([AUD_A]), "{v}");
    assert_eq!(v["x509_id"], id("py"), "{v}");
    assert_eq!(v["x509_chain"], 1, "{v}");
    assert_eq!(v["validated"], id("py"), "{v}");
    assert_ne!(v["wrong_audience"], "accepted", "{v}");
}

/// Inside `leash exec`, the Python client's JWT-SVID is bound to the task: its claims
/// name the task, and its lease completes when the task ends.
const PY_TASK: &str = r#"
import sys
from spiffe import WorkloadApiClient
with WorkloadApiClient() as client:
    print(client.fetch_jwt_svid(audience={sys.argv[1]}).token)
"#;

#[test]
fn svids_fetched_inside_a_task_are_bound_to_it_and_end_with_it() {
    let c = svid_cluster(&["job"]);
    let ep = endpoint(&c);
    let work = crate::tasks::workdir(&c, "spiffe-task");
    let py = python::python();
    let py = py.display().to_string();
    let mut cmd = crate::tasks::exec_command(
        &c,
        &work,
        &["--task-name", "spiffe-job", "--", &py, "-c", PY_TASK, AUD_A],
    );
    cmd.env("SPIFFE_ENDPOINT_SOCKET", &ep);
    let out = c.run(cmd);
    let token = out.ok();
    c.remember_secret(&token);
    let cl = claims(&token);
    assert!(
        cl["leash"]["task"]
            .as_str()
            .is_some_and(|t| t.starts_with("t-")),
        "the SVID names its task: {cl}"
    );
    let lease = cl["jti"].as_str().unwrap_or_default().to_string();
    c.eventually("the task's SVID lease completes", || {
        (c.lease(&lease)["state"] == "completed").then_some(())
    });
    // Outside the task the same caller gets its own SVID, not the task's.
    let rt = rt();
    let own = rt.block_on(async {
        let client = WorkloadApiClient::connect_to(endpoint(&c))
            .await
            .expect("connect");
        client.fetch_jwt_svid(&[AUD_A], None).await.expect("own")
    });
    let own = claims(own.token());
    assert_ne!(own["jti"], cl["jti"]);
    assert!(own["leash"]["task"].is_null(), "{own}");
}
