//! A Python virtual environment with the third-party clients the tests talk to the
//! daemons with (the `spiffe` package, `grpcio`, PyJWT …), pinned in
//! `tests/python/requirements.txt`.
//!
//! It is made from the package registry the first time it is needed, under `target/`,
//! in a directory named after a digest of the requirements, so a change of the pins makes
//! a new one and a repeated run reuses it without the network. `cargo xtask test` makes it
//! before the tests start; a test run directly makes it on first use. It is built in a
//! temporary directory and renamed into place, so two processes making it at once cannot
//! leave a half-made one behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The pinned requirements.
const REQUIREMENTS: &str = include_str!("../python/requirements.txt");

/// Where the environment lives: `target/leash-py-<digest of the requirements>`.
pub fn venv_dir() -> PathBuf {
    let digest = ring::digest::digest(&ring::digest::SHA256, REQUIREMENTS.as_bytes());
    let short: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(format!("leash-py-{short}"))
}

/// The environment's interpreter, making the environment first if it is missing. Panics
/// with what to do when it cannot be made (no `python3`, or the registry unreachable).
pub fn python() -> PathBuf {
    static MADE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match MADE.get_or_init(ensure) {
        Ok(p) => p.clone(),
        Err(e) => panic!("the Python test environment could not be made: {e}"),
    }
}

/// Make the environment if it is missing; the path of its interpreter.
pub fn ensure() -> Result<PathBuf, String> {
    let dir = venv_dir();
    let py = dir.join("bin").join("python");
    if py.is_file() {
        return Ok(py);
    }
    let parent = dir.parent().ok_or("target/ has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}-{}",
        dir.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("leash-py"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let python3 = std::env::var("LEASH_TEST_PYTHON3").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python3).arg("-m").arg("venv").arg(&tmp))?;
    let req = tmp.join("requirements.txt");
    std::fs::write(&req, REQUIREMENTS).map_err(|e| format!("{}: {e}", req.display()))?;
    run(Command::new(tmp.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&req))?;
    // Scripts in a venv name their interpreter by absolute path: the directory must not
    // move after they are written. Only `python -m …` is used, which does not care.
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Someone else finished first: theirs is as good as ours.
        Err(_) if py.is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => return Err(format!("{} -> {}: {e}", tmp.display(), dir.display())),
    }
    Ok(py)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("{shown}: {e} (is python3 installed?)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Run a Python script with the environment's interpreter, for at most `timeout`; its
/// output.
pub fn run_script(
    script: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: std::time::Duration,
) -> crate::process::Output {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    crate::process::run(cmd, None, timeout)
}
