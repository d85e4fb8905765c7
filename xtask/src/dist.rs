//! `cargo xtask dist`: the release tarballs, one per binary set, under `target/dist/`.
//!
//! - `leash-control-plane-VERSION-TARGET.tar.gz`: `leash-control-plane`, `leashctl`;
//! - `leash-agent-VERSION-TARGET.tar.gz`: `leash-agentd`, `leash`;
//!
//! each holding `bin/`, `systemd/` (units), `completions/` (bash, zsh, fish),
//! `man/man1/`, `etc/leash/` (a sample configuration), `INSTALL.md`, the project's
//! README.md (and LICENSE when there is one), with a `SHA256SUMS` next to the tarballs.
//! The units and sample configurations live in `xtask/dist/`. Completions and man pages
//! come from the binaries themselves (`leash_proto::shell_assets`), so they always match
//! the command line that was built. The archives are made with the system `tar`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// `cargo xtask dist` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which build to package: `release` (default) or `debug`.
    #[arg(long, default_value = "release", value_parser = ["release", "debug"])]
    profile: String,
    /// Package the binaries already in target/PROFILE instead of building them.
    #[arg(long)]
    no_build: bool,
    /// Where to write the tarballs and SHA256SUMS (default: target/dist).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// One tarball: its name prefix, the cargo package building its binaries, and what goes in.
struct Set {
    name: &'static str,
    package: &'static str,
    bins: &'static [&'static str],
    units: &'static [&'static str],
    /// (file in xtask/dist/etc, installed name under etc/leash, mode)
    etc: &'static [(&'static str, &'static str, u32)],
}

const SETS: [Set; 2] = [
    Set {
        name: "leash-control-plane",
        package: "leash-control-plane",
        bins: &["leash-control-plane", "leashctl"],
        units: &["leash-control-plane.service"],
        etc: &[("control-plane.toml", "control-plane.toml", 0o640)],
    },
    Set {
        name: "leash-agent",
        package: "leash-agentd",
        bins: &["leash-agentd", "leash"],
        units: &["leash-agentd.service"],
        etc: &[("agentd.env", "agentd.env", 0o600)],
    },
];

fn workspace_root() -> PathBuf {
    // xtask/ sits at the workspace root.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// The host's target triple, as rustc names it (the binaries are built for the host).
fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("cannot run {rustc} -vV"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
        .with_context(|| format!("`{rustc} -vV` names no host triple"))
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", to.display()))?;
    Ok(())
}

/// Build (unless `--no-build`) and package; prints the tarballs' paths.
pub fn run(a: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let root = workspace_root();
    let bin_dir = target_dir().join(&a.profile);
    let out = a.out.unwrap_or_else(|| target_dir().join("dist"));
    if !a.no_build {
        let mut cmd = crate::cargo();
        cmd.current_dir(&root).arg("build").arg("--bins");
        if a.profile == "release" {
            cmd.arg("--release");
        }
        for s in &SETS {
            cmd.args(["-p", s.package]);
        }
        crate::run(&mut cmd)?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let triple = host_triple()?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let stage_root = out.join(".stage");
    if stage_root.exists() {
        std::fs::remove_dir_all(&stage_root)
            .with_context(|| format!("cannot clear {}", stage_root.display()))?;
    }
    let assets = root.join("xtask").join("dist");
    let mut tarballs = Vec::new();
    for s in &SETS {
        let top = format!("{}-{version}-{triple}", s.name);
        let stage = stage_root.join(&top);
        for d in ["bin", "systemd", "etc/leash"] {
            std::fs::create_dir_all(stage.join(d))
                .with_context(|| format!("cannot create {}", stage.join(d).display()))?;
        }
        for b in s.bins {
            let from = bin_dir.join(b);
            if !from.is_file() {
                bail!(
                    "{} is missing: build it first (cargo build{} --bins -p {}) or drop --no-build",
                    from.display(),
                    if a.profile == "release" {
                        " --release"
                    } else {
                        ""
                    },
                    s.package
                );
            }
            let to = stage.join("bin").join(b);
            copy(&from, &to, 0o755)?;
            // Each binary writes its completions and man pages from its own clap
            // definition (leash_proto::shell_assets).
            let st = Command::new(&to)
                .env(leash_proto::shell_assets::ASSETS_ENV, &stage)
                .status()
                .with_context(|| format!("cannot run {}", to.display()))?;
            if !st.success() {
                bail!("{} could not write its completions and man pages ({st})", b);
            }
        }
        for u in s.units {
            copy(
                &assets.join("systemd").join(u),
                &stage.join("systemd").join(u),
                0o644,
            )?;
        }
        for (from, to, mode) in s.etc {
            copy(
                &assets.join("etc").join(from),
                &stage.join("etc/leash").join(to),
                *mode,
            )?;
        }
        copy(&assets.join("INSTALL.md"), &stage.join("INSTALL.md"), 0o644)?;
        for f in ["README.md", "LICENSE", "LICENSE.md", "LICENSE-APACHE"] {
            if root.join(f).is_file() {
                copy(&root.join(f), &stage.join(f), 0o644)?;
            }
        }
        let tarball = out.join(format!("{top}.tar.gz"));
        crate::run(
            Command::new("tar")
                .arg("-C")
                .arg(&stage_root)
                .args([
                    "--owner=0",
                    "--group=0",
                    "--numeric-owner",
                    "--sort=name",
                    "-czf",
                ])
                .arg(&tarball)
                .arg(&top),
        )?;
        tarballs.push(format!("{top}.tar.gz"));
    }
    std::fs::remove_dir_all(&stage_root)
        .with_context(|| format!("cannot remove {}", stage_root.display()))?;
    let sums = Command::new("sha256sum")
        .current_dir(&out)
        .args(&tarballs)
        .output()
        .context("cannot run sha256sum")?;
    if !sums.status.success() {
        bail!(
            "sha256sum failed: {}",
            String::from_utf8_lossy(&sums.stderr).trim()
        );
    }
    std::fs::write(out.join("SHA256SUMS"), &sums.stdout)
        .with_context(|| format!("cannot write {}", out.join("SHA256SUMS").display()))?;
    for t in &tarballs {
        println!("{}", out.join(t).display());
    }
    println!("{}", out.join("SHA256SUMS").display());
    eprintln!("dist took {:.0?}", started.elapsed());
    Ok(())
}
