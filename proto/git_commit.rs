// The git commit a binary is built from, for `--version` (see `leash_proto::version!`).
// Included by the build scripts of the crates that hold binaries (agentd/build.rs,
// control-plane/build.rs), so it is written once.
//
// It sets `LEASH_GIT_COMMIT` for the crate: the environment variable of that name when
// set (packagers building from a tarball of the source), else `git rev-parse --short=12
// HEAD`, else `unknown` (no git, or not a checkout). It asks Cargo to run again only
// when HEAD, the branch it points to or the packed refs change, so a build does not
// start over at every edit.

fn emit_git_commit() {
    println!("cargo:rerun-if-env-changed=LEASH_GIT_COMMIT");
    if let Ok(c) = std::env::var("LEASH_GIT_COMMIT") {
        if !c.trim().is_empty() {
            println!("cargo:rustc-env=LEASH_GIT_COMMIT={}", c.trim());
            return;
        }
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!s.is_empty()).then_some(s)
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if commit.is_some() {
        let cwd = std::env::current_dir().unwrap_or_default();
        let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(r);
        }
        for w in watched {
            if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
                println!("cargo:rerun-if-changed={}", cwd.join(p).display());
            }
        }
    } else {
        // Outside a checkout: nothing to watch but this script.
        println!("cargo:rerun-if-changed=build.rs");
    }
    println!(
        "cargo:rustc-env=LEASH_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
