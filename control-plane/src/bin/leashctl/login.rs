//! `leashctl login --server URL --code CODE`: make a P-256 key pair here, send a CSR
//! with the one-time code, and keep the admin certificate, its key (mode 0600) and the
//! CA bundle under `~/.config/leash/` (or `$XDG_CONFIG_HOME/leash/`), with a profile
//! `leashctl.toml` naming them. The private key never leaves this machine; the CA is
//! pinned on first contact by the hash the code carries.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use leash_proto::admin_code::AdminCode;
use leash_proto::cli::{time, Fail};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;

use crate::remote::{self, Profile, Trust};

/// Write `data` to `path` with `mode`, replacing it whole (a temporary file renamed).
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), Fail> {
    let fail = |e: std::io::Error| Fail(format!("cannot write {}: {e}", path.display()), 1);
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(data).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Run `leashctl login`. `profile` is where to write the profile (default
/// `<config dir>/leashctl.toml`).
pub(crate) async fn run(server: &str, code: &str, profile: Option<PathBuf>) -> Result<(), Fail> {
    let code = AdminCode::parse(code).map_err(|e| Fail::usage(e.to_string()))?;
    remote::parse_server(server)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Fail(format!("cannot make a key pair: {e}"), 1))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .map_err(|e| Fail(format!("cannot make a certificate request: {e}"), 1))?;
    let cfg = remote::client_config(Trust::Pin(code.ca_pin.clone()), None)?;
    let channel = remote::connect(server, cfg).await?;
    let r = AdminClient::new(channel)
        .admin_login(v1::AdminLoginRequest {
            code: AdminCode::encode(&code.name, &code.secret_bytes(), &code.ca_pin),
            csr_der: csr.der().to_vec(),
        })
        .await?
        .into_inner();
    // The pinned CA first, then the others in force (both while the CA rotates),
    // learned over the connection the pin authenticated.
    let mut cas = r.ca_certificates_der.clone();
    let pinned = cas
        .iter()
        .position(|c| remote::spki_pin(c).as_deref() == Some(code.ca_pin.as_str()))
        .ok_or_else(|| {
            Fail(
                "the CA bundle returned does not hold the CA the code pins".into(),
                2,
            )
        })?;
    cas.swap(0, pinned);

    let dir = profile
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(remote::config_dir, Ok)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| Fail(format!("cannot create {}: {e}", dir.display()), 1))?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let key_path = dir.join(format!("admin-{}.key", r.name));
    let cert_path = dir.join(format!("admin-{}.crt", r.name));
    let ca_path = dir.join("ca.pem");
    let profile_path = match profile {
        Some(p) => p,
        None => remote::default_profile_path()?,
    };
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(
        &cert_path,
        remote::pem("CERTIFICATE", std::slice::from_ref(&r.certificate_der)).as_bytes(),
        0o644,
    )?;
    write_file(&ca_path, remote::pem("CERTIFICATE", &cas).as_bytes(), 0o644)?;
    let p = Profile {
        server: Some(server.trim_end_matches('/').to_string()),
        cert: Some(cert_path.clone()),
        key: Some(key_path.clone()),
        ca: Some(ca_path.clone()),
    };
    let text =
        toml::to_string(&p).map_err(|e| Fail(format!("cannot write the profile: {e}"), 1))?;
    write_file(&profile_path, text.as_bytes(), 0o600)?;
    eprintln!(
        "logged in as {} (role {}) to {server}; the certificate expires at {}",
        r.name,
        r.role,
        time(r.not_after_unix)
    );
    eprintln!("wrote {} (private key, mode 0600)", key_path.display());
    eprintln!("wrote {} (admin certificate)", cert_path.display());
    eprintln!("wrote {} (CA bundle)", ca_path.display());
    eprintln!("wrote {} (profile)", profile_path.display());
    Ok(())
}
