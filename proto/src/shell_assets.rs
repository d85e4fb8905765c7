//! What a binary writes about its own command line for packaging: shell completions
//! (bash, zsh, fish) and man pages, generated from its clap definition, and the
//! version string with the git commit it was built from.
//!
//! `cargo xtask dist` runs each freshly built binary with [`ASSETS_ENV`] naming an
//! output directory; [`crate::startup::parse_args`] then writes the files there and
//! exits instead of parsing the command line. Asking the binary itself keeps the clap
//! definitions in the binaries, next to the code that handles them.

use std::path::Path;

/// Set to a directory, it makes a binary write `completions/` and `man/man1/` under it
/// and exit 0 (1 if it cannot write them).
pub const ASSETS_ENV: &str = "LEASH_WRITE_SHELL_ASSETS";

/// `VERSION (commit COMMIT)` for `#[command(version = ...)]`, expanded in the binary's
/// crate: `LEASH_GIT_COMMIT` comes from its build script (`git rev-parse --short=12
/// HEAD`, the `LEASH_GIT_COMMIT` environment variable at build time, or `unknown`).
#[macro_export]
macro_rules! version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("LEASH_GIT_COMMIT"),
            ")"
        )
    };
}

/// Errors writing the assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// A directory or file could not be created or written.
    #[error("cannot write shell assets under {dir}: {source}")]
    Write {
        /// The directory being written.
        dir: String,
        /// What the file system said.
        source: std::io::Error,
    },
}

/// Write `completions/{NAME.bash,_NAME,NAME.fish}` and `man/man1/NAME*.1` (one page per
/// subcommand) for `cmd` under `dir`.
pub fn write(cmd: clap::Command, dir: &Path) -> Result<(), AssetsError> {
    use clap_complete::Shell;
    let err = |d: &Path| {
        let dir = d.display().to_string();
        move |source| AssetsError::Write { dir, source }
    };
    let completions = dir.join("completions");
    let man = dir.join("man").join("man1");
    std::fs::create_dir_all(&completions).map_err(err(&completions))?;
    std::fs::create_dir_all(&man).map_err(err(&man))?;
    // Man pages first: completing builds the command, which adds the `help`
    // subcommand that the man pages leave out.
    clap_mangen::generate_to(cmd.clone(), &man).map_err(err(&man))?;
    let mut cmd = cmd;
    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)
            .map_err(err(&completions))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_completions_and_one_page_per_subcommand() {
        let cmd = clap::Command::new("demo")
            .version("1.0")
            .subcommand(clap::Command::new("serve").about("Serve things"));
        let dir = tempfile::tempdir().unwrap();
        write(cmd, dir.path()).unwrap();
        let bash = std::fs::read_to_string(dir.path().join("completions/demo.bash")).unwrap();
        assert!(bash.contains("serve"), "{bash}");
        assert!(dir.path().join("completions/_demo").is_file());
        assert!(dir.path().join("completions/demo.fish").is_file());
        let page = std::fs::read_to_string(dir.path().join("man/man1/demo-serve.1")).unwrap();
        assert!(page.contains("Serve things"), "{page}");
        assert!(dir.path().join("man/man1/demo.1").is_file());
        assert!(!dir.path().join("man/man1/demo-help.1").exists());
    }
}
