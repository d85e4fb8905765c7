//! `leash`: the workload-side CLI. It asks the local agent over its Unix socket; the
//! agent attests this process (and, since this is the installed CLI, takes path and
//! hash selectors from its parent), so nothing here can claim an identity.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leash_proto::cli::{parse_secs, print_json, token_arg, Fail};
use leash_proto::outln;
use leash_proto::socket_trust::{self, TrustError};
use leash_proto::startup;
use leash_proto::v1;
use leash_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "leash",
    version = leash_proto::version!(),
    about = "Fetch short-lived credentials from the local Leash agent"
)]
struct Cli {
    /// Agent socket.
    #[arg(long, env = "LEASH_AGENT_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a credential (only the secret goes to stdout): a JWT with a newline, a
    /// secret's value exactly as stored.
    Get {
        /// Credential name, or a reference: leash://NAME?action=A&audience=U&ttl=T&as=W#FIELD.
        name: String,
        /// Action class (default: the credential's).
        #[arg(long)]
        action: Option<String>,
        /// Audience (default: the credential's first).
        #[arg(long)]
        audience: Option<String>,
        /// Lifetime, e.g. 2m (at most the credential's max_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// Which workload, when several match.
        #[arg(long = "as")]
        as_workload: Option<String>,
        /// Principal a shared agent acts for.
        #[arg(long)]
        on_behalf_of: Option<String>,
        /// Bypass the cache.
        #[arg(long)]
        fresh: bool,
        /// When the request needs a human approval, wait for it (status on stderr).
        #[arg(long)]
        wait: bool,
        /// How long to wait for an approval.
        #[arg(long, default_value = "10m", requires = "wait")]
        timeout: String,
        /// One field of a JSON-format secret (a string is printed as it is).
        #[arg(long)]
        field: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// The attested identity of the caller and its matching workloads.
    Whoami {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Agent and sync health.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run a command as a task: its credentials exist only while it runs.
    Exec {
        /// Name of the task (shown in events and lease timelines).
        #[arg(long)]
        task_name: Option<String>,
        /// VAR=CREDENTIAL[:ACTION] or VAR=leash://…: put a credential in the command's
        /// environment (repeatable).
        #[arg(long = "env", value_name = "VAR=CREDENTIAL[:ACTION]")]
        envs: Vec<String>,
        /// A file of VAR=leash://… lines (credentials) and VAR=value lines (passed on as
        /// they are); # comments, blank lines and `export ` are allowed (repeatable).
        #[arg(long = "env-file", value_name = "FILE")]
        env_files: Vec<PathBuf>,
        /// Resolve variables of this environment whose value is a leash:// reference (the
        /// default).
        #[arg(long, overrides_with = "no_resolve_env")]
        resolve_env: bool,
        /// Pass leash:// values of this environment on as they are.
        #[arg(long, overrides_with = "resolve_env")]
        no_resolve_env: bool,
        /// Do not mask injected credentials in the command's stdout and stderr.
        #[arg(long)]
        no_masking: bool,
        /// After the command exits, how long its leftover processes get between SIGTERM and SIGKILL.
        #[arg(long, default_value = "5s")]
        grace: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, value_name = "-- CMD ARGS")]
        command: Vec<String>,
    },
    /// Fill {{ leash://NAME }} placeholders of a config file (prefer `exec`: the result
    /// is a copy on disk that Leash cannot wipe).
    Render {
        /// The template.
        template: PathBuf,
        /// Write here (mode 0600) instead of stdout.
        #[arg(short = 'o', long = "out", value_name = "OUT")]
        out: Option<PathBuf>,
        /// Write into a directory others can read or write.
        #[arg(long)]
        force: bool,
    },
    /// Tasks for runners that manage their jobs' processes themselves.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Ask whether a token is still active (RFC 7662 JSON), through the agent.
    Introspect {
        /// The token, or `-` for stdin.
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Start a task whose root is this process's parent (the hook's caller) or --root-pid.
    Start {
        /// The task's root process (default: the parent of `leash`); it must be an
        /// ancestor or descendant of the caller, with the caller's uid.
        #[arg(long)]
        root_pid: Option<u32>,
        /// Task name.
        #[arg(long)]
        name: Option<String>,
        /// Print `LEASH_TASK=…` lines to export, instead of the bare handle.
        #[arg(long)]
        print_env: bool,
    },
    /// End the task named by $LEASH_TASK (or --handle): wipe its credentials now.
    End {
        /// The task handle (default: $LEASH_TASK).
        #[arg(long, env = "LEASH_TASK", hide_env_values = true)]
        handle: Option<String>,
    },
}

/// `--socket` / `$LEASH_AGENT_SOCKET` if given, else the system agent's socket, else
/// one under `$XDG_RUNTIME_DIR` (never a guessable path in `/tmp`).
fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        socket_trust::default_client_socket(
            Path::new(socket_trust::SYSTEM_AGENT_SOCKET),
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        )
    })
}

/// Refuse a socket someone other than root or the caller could have set up, before
/// anything is sent to it.
fn trusted_socket(socket: &Path) -> Result<(), String> {
    socket_trust::check_socket(socket, socket_trust::euid()).map_err(|e| match e {
        TrustError::Missing { .. } => format!(
            "no Leash agent answers at {}: {e}\nIs leash-agentd running? Point leash at its socket with --socket or $LEASH_AGENT_SOCKET.",
            socket.display()
        ),
        e => format!(
            "refusing to use the agent socket {}: {e}.\nUse the socket of the agent root runs ({}), or one whose directories only root or you can change, with --socket or $LEASH_AGENT_SOCKET.",
            socket.display(),
            socket_trust::SYSTEM_AGENT_SOCKET
        ),
    })
}

#[path = "leash/exec.rs"]
mod exec;
#[path = "leash/mask.rs"]
mod mask;
#[path = "leash/output.rs"]
mod output;
#[path = "leash/render.rs"]
mod render;
#[path = "leash/served.rs"]
mod served;
#[path = "leash/stdio.rs"]
mod stdio;

use output::Output;

/// `leash get leash://NAME?…#field`: the reference's options fill in what the flags left
/// empty; an option given both ways must agree. Returns the field to print, if any.
fn reference_into(
    req: &mut v1::FetchRequest,
    field: Option<String>,
) -> Result<Option<String>, Fail> {
    use leash_proto::reference;
    if !reference::is_reference(&req.credential) {
        return Ok(field);
    }
    let r = reference::parse(&req.credential).map_err(|e| Fail(e.to_string(), 1))?;
    let merge = |flag: &mut String, from_ref: &str, what: &str| {
        if from_ref.is_empty() || flag == from_ref {
        } else if flag.is_empty() {
            *flag = from_ref.to_string();
        } else {
            return Err(Fail(
                format!("--{what} and the reference's {what} differ; give one of them"),
                1,
            ));
        }
        Ok(())
    };
    merge(&mut req.action, &r.action, "action")?;
    merge(&mut req.audience, &r.audience, "audience")?;
    merge(&mut req.as_workload, &r.as_workload, "as")?;
    if r.ttl_seconds != 0 {
        if req.ttl_seconds != 0 && req.ttl_seconds != r.ttl_seconds {
            return Err(Fail(
                "--ttl and the reference's ttl differ; give one of them".into(),
                1,
            ));
        }
        req.ttl_seconds = r.ttl_seconds;
    }
    req.credential = r.name;
    match (field, r.field) {
        (Some(a), Some(b)) if a != b => Err(Fail(
            "--field and the reference's #field differ; give one of them".into(),
            1,
        )),
        (a, b) => Ok(a.or(b)),
    }
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let socket = socket_path(cli.socket);
    trusted_socket(&socket).map_err(|m| Fail(m, 5))?;
    let channel: Channel = leash_proto::uds::connect(&socket).await.map_err(|e| {
        Fail(
            format!("no Leash agent answers: {e}\nIs leash-agentd running? Point leash at its socket with --socket or $LEASH_AGENT_SOCKET."),
            5,
        )
    })?;
    let mut c = AgentClient::new(channel).max_decoding_message_size(leash_proto::MAX_MESSAGE_BYTES);
    match cli.cmd {
        Cmd::Get {
            name,
            action,
            audience,
            ttl,
            as_workload,
            on_behalf_of,
            fresh,
            wait,
            timeout,
            field,
            output,
        } => {
            let ttl_seconds = match ttl {
                Some(t) => parse_secs(&t).map_err(|m| Fail(format!("--ttl: {m}"), 1))?,
                None => 0,
            };
            let mut req = v1::FetchRequest {
                credential: name,
                action: action.unwrap_or_default(),
                audience: audience.unwrap_or_default(),
                ttl_seconds,
                as_workload: as_workload.unwrap_or_default(),
                on_behalf_of: on_behalf_of.unwrap_or_default(),
                fresh,
                task_handle: std::env::var("LEASH_TASK").unwrap_or_default(),
            };
            let field = reference_into(&mut req, field)?;
            let timeout = std::time::Duration::from_secs(u64::from(
                parse_secs(&timeout).map_err(|m| Fail(format!("--timeout: {m}"), 1))?,
            ));
            let start = std::time::Instant::now();
            let mut told = false;
            let r = loop {
                match c.fetch(req.clone()).await {
                    Ok(r) => break r.into_inner(),
                    Err(s)
                        if wait
                            && leash_proto::reason::Reason::of(&s)
                                == leash_proto::reason::Reason::Pending =>
                    {
                        let id = s
                            .metadata()
                            .get(leash_proto::reason::APPROVAL_KEY)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?")
                            .to_string();
                        if !told {
                            eprintln!("waiting for approval {id} (an approver runs: leashctl approval approve {id})");
                            told = true;
                        }
                        if start.elapsed() >= timeout {
                            return Err(Fail(
                                format!(
                                    "timed out after {}s waiting for approval {id}",
                                    timeout.as_secs()
                                ),
                                6,
                            ));
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    Err(s) => return Err(s.into()),
                }
            };
            if told {
                eprintln!("approved after {}s", start.elapsed().as_secs());
            }
            output::fetched(&r, &req.credential, field.as_deref(), output)
                .map_err(|m| Fail(m, 1))?;
        }
        Cmd::Whoami { output } => {
            let r = c.who_am_i(v1::WhoAmIRequest {}).await?.into_inner();
            output::whoami(r, output);
        }
        Cmd::Status { output } => {
            let r = c.status(v1::StatusRequest {}).await?.into_inner();
            if r.health_only {
                eprintln!("note: the agent could not attest this process (another pid or mount namespace?); it shows health only");
            }
            output::status(&r, output);
        }
        Cmd::Exec { .. } => unreachable!("handled in main"),
        Cmd::Render {
            template,
            out,
            force,
        } => render::run(&mut c, template, out, force).await?,
        Cmd::Task(TaskCmd::Start {
            root_pid,
            name,
            print_env,
        }) => {
            let root = root_pid.unwrap_or_else(|| nix::unistd::getppid().as_raw() as u32);
            let r = c
                .start_task(v1::StartTaskRequest {
                    root_pid: root,
                    name: name.unwrap_or_default(),
                    grace_ms: 0,
                })
                .await?
                .into_inner();
            eprintln!("task {} started (root pid {root})", r.task_id);
            if print_env {
                outln!("LEASH_TASK={}", r.handle);
            } else {
                outln!("{}", r.handle);
            }
        }
        Cmd::Task(TaskCmd::End { handle }) => {
            let handle = handle.filter(|h| !h.trim().is_empty()).ok_or_else(|| {
                Fail("no task handle: set $LEASH_TASK or pass --handle".into(), 1)
            })?;
            let r = c
                .end_task(v1::EndTaskRequest {
                    handle,
                    complete_in_background: false,
                })
                .await?
                .into_inner();
            eprintln!(
                "task ended: {} credential(s) wiped, {} lease(s) completed",
                r.wiped, r.completed
            );
        }
        Cmd::Introspect { token } => {
            let token = token_arg(token.as_deref())?;
            let r = c
                .introspect(v1::IntrospectRequest { token })
                .await?
                .into_inner();
            print_json(&serde_json::from_str::<serde_json::Value>(&r.json).unwrap_or_default());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // `leash exec` passes its command's status through, so its own failures use 125 (as
    // env(1) and docker do) rather than 1.
    let exec = std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "exec");
    let usage_exit = if exec {
        exec::LEASH_FAILED
    } else {
        startup::USAGE_EXIT
    };
    let cli: Cli = match startup::parse_args(usage_exit) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match startup::cli_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if let Cmd::Exec {
        task_name,
        envs,
        env_files,
        resolve_env: _,
        no_resolve_env,
        no_masking,
        grace,
        command,
    } = cli.cmd
    {
        let socket = socket_path(cli.socket);
        if let Err(m) = trusted_socket(&socket) {
            eprintln!("leash exec: {m}");
            return ExitCode::from(exec::LEASH_FAILED);
        }
        let opts = exec::Options {
            task_name,
            envs,
            env_files,
            resolve_env: !no_resolve_env,
            masking: !no_masking,
            grace,
            command,
        };
        return ExitCode::from(rt.block_on(exec::run(socket, opts)));
    }
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}
