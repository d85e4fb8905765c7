//! Sets `LEASH_GIT_COMMIT` for `--version` (the logic is shared: proto/git_commit.rs).
include!("../proto/git_commit.rs");

fn main() {
    emit_git_commit();
}
