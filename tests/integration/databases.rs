//! PostgreSQL roles per lease (credential kind `postgres`) against a real, throwaway
//! PostgreSQL server started by the harness (`leash_tests::pg`).

use leash_tests::pg::Pg;

/// The harness's server takes the docs' least-privilege admin, refuses a wrong password
/// over TCP, and is gone when dropped.
#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn the_throwaway_server_authenticates_like_a_real_one() {
    leash_tests::require_root();
    let pg = Pg::start();
    let admin = pg.app_database("adm1n-pw");
    assert!(admin.contains("leash_admin:adm1n-pw@"), "{admin}");
    let as_admin = |url: &str| {
        pg.server_command("psql")
            .args([
                "-X",
                "-A",
                "-t",
                url,
                "-c",
                "SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user",
            ])
            .output()
            .expect("psql")
    };
    let ok = as_admin(&pg.tcp_url("leash_admin", "adm1n-pw", "app"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "t");
    let bad = as_admin(&pg.tcp_url("leash_admin", "wrong", "app"));
    assert!(!bad.status.success(), "a wrong password was accepted");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let dir = pg.dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "the server's temp dir is left behind");
}
