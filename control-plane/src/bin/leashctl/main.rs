//! `leashctl`: the fleet admin's CLI, speaking the admin API on the control plane's
//! Unix socket. Errors map to exit codes through the reason each status carries.
//!
//! This file parses the command line, connects and dispatches; each command group has
//! its module, and `output` prints records as tables or JSON. Start-up shared with the
//! other binaries is in `leash_proto::startup`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use leash_proto::cli::Fail;
use leash_proto::socket_trust::{self, TrustError};
use leash_proto::startup;
use leash_proto::v1::admin_client::AdminClient;

mod admin_cert;
mod approval;
mod audit;
mod audit_verify;
mod credential;
mod host;
mod input;
mod join_token;
mod key;
mod lease;
mod login;
mod oidc;
mod output;
mod owner;
mod policy;
mod remote;
mod secret;
mod secret_import;
mod tokens;
mod workload;

use admin_cert::AdminCertCmd;
use approval::ApprovalCmd;
use audit::{AuditCmd, ReportCmd};
use credential::CredentialCmd;
use host::HostCmd;
use join_token::JoinTokenCmd;
use key::KeyCmd;
use lease::{LeaseCmd, RevokeArgs};
use oidc::{IntrospectionClientCmd, OidcCmd};
use owner::OwnerCmd;
use policy::PolicyCmd;
use secret::SecretCmd;
use workload::WorkloadCmd;

#[derive(Parser)]
#[command(name = "leashctl", version = leash_proto::version!(), about = "Administer a Leash control plane")]
struct Cli {
    /// Admin socket of the control plane.
    #[arg(long, env = "LEASH_ADMIN_SOCKET", global = true)]
    admin_socket: Option<PathBuf>,
    /// Administer the control plane at https://HOST:PORT (its agent port) over TLS with
    /// an admin certificate, instead of the local socket. This and the four flags after
    /// it go before the command: `leashctl --server URL --cert F --key F host list`.
    #[arg(long, env = "LEASH_SERVER")]
    server: Option<String>,
    /// The admin certificate (PEM) for --server.
    #[arg(long, env = "LEASH_CERT")]
    cert: Option<PathBuf>,
    /// Its private key (PEM) for --server.
    #[arg(long, env = "LEASH_KEY")]
    key: Option<PathBuf>,
    /// The CA bundle (PEM) to trust for --server.
    #[arg(long, env = "LEASH_CA")]
    ca: Option<PathBuf>,
    /// The profile `login` writes and remote commands read [default:
    /// ~/.config/leash/leashctl.toml].
    #[arg(long, env = "LEASH_PROFILE")]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One-time tokens that let a host enroll.
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
    /// Non-human identities.
    #[command(subcommand)]
    Workload(WorkloadCmd),
    /// What can be issued.
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Enrolled machines.
    #[command(subcommand)]
    Host(HostCmd),
    /// Issued credentials.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Cedar policy: check, apply, show, diff, explain.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Take credentials back from every host.
    Revoke(RevokeArgs),
    /// Requests waiting for a human.
    #[command(subcommand)]
    Approval(ApprovalCmd),
    /// Who is accountable; offboarding.
    #[command(subcommand)]
    Owner(OwnerCmd),
    /// Reports.
    #[command(subcommand)]
    Report(ReportCmd),
    /// Ask whether a token is still active (RFC 7662 JSON).
    Introspect {
        /// The token, or `-` to read it from stdin.
        token: Option<String>,
    },
    /// Print the JSON Web Key Set verifiers use.
    Jwks,
    /// Keys: the master key, the JWT signing keys and the CA.
    #[command(subcommand)]
    Key(KeyCmd),
    /// The audit trail, as JSON lines.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Brokered secrets: values stored sealed, released like any credential.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Clients of the HTTPS /introspect endpoint (client id and secret).
    #[command(subcommand)]
    IntrospectionClient(IntrospectionClientCmd),
    /// The OIDC issuer's documents: discovery and JWKS.
    #[command(subcommand)]
    Oidc(OidcCmd),
    /// Certificates for remote administration: issue a login code, revoke, list.
    #[command(subcommand)]
    AdminCert(AdminCertCmd),
    /// Redeem a login code (with --server): make a key pair here, get an admin
    /// certificate, and write it with a profile under ~/.config/leash/.
    Login {
        /// The control plane, https://HOST:PORT (its agent port).
        #[arg(long)]
        server: String,
        /// The one-time code from `leashctl admin-cert issue`.
        #[arg(long)]
        code: String,
    },
}

impl Cmd {
    /// Whether the command streams until it is stopped (`audit tail|export --follow`).
    fn follows(&self) -> bool {
        matches!(
            self,
            Cmd::Audit(AuditCmd::Tail { follow: true, .. })
                | Cmd::Audit(AuditCmd::Export { follow: true, .. })
        )
    }
}

/// `--admin-socket` / `$LEASH_ADMIN_SOCKET` if given, else the system control plane's
/// socket, else one under `$XDG_RUNTIME_DIR` (never a guessable path in `/tmp`).
fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        socket_trust::default_client_socket(
            Path::new(socket_trust::SYSTEM_ADMIN_SOCKET),
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        )
    })
}

/// Refuse a socket someone other than root or the caller could have set up, before
/// anything (a token to introspect, a request for a join token) is sent to it.
fn trusted_socket(socket: &Path) -> Result<(), Fail> {
    socket_trust::check_socket(socket, socket_trust::euid()).map_err(|e| match e {
        TrustError::Missing { .. } => Fail(format!(
            "no control plane answers at {}: {e}\nIs leash-control-plane running? Point leashctl at its admin socket with --admin-socket or $LEASH_ADMIN_SOCKET.",
            socket.display()
        ), 5),
        e => Fail(format!(
            "refusing to use the admin socket {}: {e}.\nUse the socket of the control plane root runs ({}), or one whose directories only root or you can change, with --admin-socket or $LEASH_ADMIN_SOCKET.",
            socket.display(),
            socket_trust::SYSTEM_ADMIN_SOCKET
        ), 5),
    })
}

/// Where the commands go.
enum Target {
    Socket(PathBuf),
    Remote(remote::Remote),
}

/// `--server` (with `--cert`, `--key`, `--ca`, missing ones from the profile) goes
/// remote; else `--admin-socket` goes to that socket; else `--profile` goes where the
/// profile says; else the local socket if it exists, else the default profile if it
/// names a server, else the local socket (which then says it is missing).
fn target(cli: &Cli) -> Result<Target, Fail> {
    let profile_at = |p: &Path| remote::read_profile(p).map(Some);
    let default_profile = || -> Result<Option<remote::Profile>, Fail> {
        match remote::default_profile_path() {
            Ok(p) if p.exists() => profile_at(&p),
            _ => Ok(None),
        }
    };
    let remote_with = |server: String, profile: Option<remote::Profile>| {
        remote::Remote::resolve(
            server,
            cli.cert.clone(),
            cli.key.clone(),
            cli.ca.clone(),
            profile.as_ref(),
        )
        .map(Target::Remote)
    };
    if let Some(server) = &cli.server {
        let profile = match &cli.profile {
            Some(p) => profile_at(p)?,
            None => default_profile()?,
        };
        return remote_with(server.clone(), profile);
    }
    if let Some(s) = &cli.admin_socket {
        return Ok(Target::Socket(s.clone()));
    }
    if let Some(p) = &cli.profile {
        let profile = profile_at(p)?;
        let server = profile
            .as_ref()
            .and_then(|p| p.server.clone())
            .ok_or_else(|| Fail::usage(format!("the profile {} names no server", p.display())))?;
        return remote_with(server, profile);
    }
    let socket = socket_path(None);
    if !socket.exists() {
        if let Some(profile) = default_profile()? {
            if let Some(server) = profile.server.clone() {
                return remote_with(server, Some(profile));
            }
        }
    }
    Ok(Target::Socket(socket))
}

async fn run(cli: Cli) -> Result<(), Fail> {
    // An export is verified without a control plane.
    if let Cmd::Audit(AuditCmd::Verify {
        from_export: Some(path),
        key,
    }) = &cli.cmd
    {
        return audit_verify::from_file(path, key.as_deref());
    }
    if let Cmd::Login { server, code } = &cli.cmd {
        return login::run(server, code, cli.profile.clone()).await;
    }
    let channel = match target(&cli)? {
        Target::Remote(r) => r.connect().await?,
        Target::Socket(socket) => {
            trusted_socket(&socket)?;
            leash_proto::uds::connect(&socket).await.map_err(|e| {
                Fail(
                    format!(
                        "{e}\nIs leash-control-plane running? Point leashctl at its admin socket with --admin-socket or $LEASH_ADMIN_SOCKET."
                    ),
                    5,
                )
            })?
        }
    };
    let mut c = AdminClient::new(channel)
        .max_decoding_message_size(leash_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(leash_proto::MAX_MESSAGE_BYTES);
    let c = &mut c;
    match cli.cmd {
        Cmd::JoinToken(cmd) => join_token::run(c, cmd).await,
        Cmd::Workload(cmd) => workload::run(c, cmd).await,
        Cmd::Credential(cmd) => credential::run(c, cmd).await,
        Cmd::Host(cmd) => host::run(c, cmd).await,
        Cmd::Lease(cmd) => lease::run(c, cmd).await,
        Cmd::Policy(cmd) => policy::run(c, cmd).await,
        Cmd::Revoke(args) => lease::revoke(c, args).await,
        Cmd::Approval(cmd) => approval::run(c, cmd).await,
        Cmd::Owner(cmd) => owner::run(c, cmd).await,
        Cmd::Report(cmd) => audit::report(c, cmd).await,
        Cmd::Introspect { token } => tokens::introspect(c, token).await,
        Cmd::Jwks => tokens::jwks(c).await,
        Cmd::Key(cmd) => key::run(c, cmd).await,
        Cmd::Audit(cmd) => audit::audit(c, cmd).await,
        Cmd::Secret(cmd) => secret::run(c, cmd).await,
        Cmd::IntrospectionClient(cmd) => oidc::clients(c, cmd).await,
        Cmd::Oidc(cmd) => oidc::oidc(c, cmd).await,
        Cmd::AdminCert(cmd) => admin_cert::run(c, cmd).await,
        Cmd::Login { .. } => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse_args(startup::USAGE_EXIT) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match startup::cli_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // A follower streams until it is stopped.
    let timeout_guard = if cli.cmd.follows() {
        Duration::MAX
    } else {
        Duration::from_secs(3600)
    };
    match rt.block_on(async { tokio::time::timeout(timeout_guard, run(cli)).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(f)) => f.exit(),
        Err(_) => startup::fail("timed out", 6),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Flag names and ids do not clash (clap's own checks of the definition).
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
