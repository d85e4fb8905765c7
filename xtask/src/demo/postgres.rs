//! `cargo xtask demo --postgres`: a PostgreSQL role per lease, end to end, against a
//! throwaway server (`leash_tests::pg::Pg`).
//!
//! A credential `app-db` whose leases are login roles; `leash get app-db` (the URL, its
//! password masked in what the demo prints); `leash exec` handing the URL to `psql`, whose
//! SELECT works and whose INSERT the read grant refuses, with the URL masked in its output;
//! then a session held open as a lease's role, `leashctl revoke --wait`, and the role gone
//! and the session cut.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use leash_tests::pg::Pg;

use super::{call, ok, step};

const ADMIN_PASSWORD: &str = "demo_admin_password";

/// What the demo shows of a text holding `password`: the password replaced.
fn masked(text: &str, password: &str) -> String {
    if password.is_empty() {
        return text.to_string();
    }
    text.replace(password, "<password>")
}

/// Run the postgres part of the demo. `leashctl`, `leash`: the binaries; `admin`, `sock`:
/// the sockets of the control plane and the agent the demo started.
pub(super) fn run(
    d: &Path,
    leashctl: &Path,
    leash: &Path,
    admin: &Path,
    sock: &Path,
) -> anyhow::Result<()> {
    let bin = leash_tests::pg::bin_dir().map_err(anyhow::Error::msg)?;
    let env_admin = [("LEASH_ADMIN_SOCKET", admin)];
    let env_agent = [("LEASH_AGENT_SOCKET", sock)];
    let ctl = |args: &[&str]| call(leashctl, args, &env_admin);
    let get = |args: &[&str]| call(leash, args, &env_agent);

    step("postgres: a throwaway PostgreSQL server, database app, a least-privilege admin role");
    let pg = Pg::start();
    let admin_url = pg.app_database(ADMIN_PASSWORD);
    eprintln!(
        "PostgreSQL on {} (socket) and 127.0.0.1:{}; admin role leash_admin: LOGIN CREATEROLE, pg_signal_backend, \
         membership WITH ADMIN OPTION in the group roles app_read and app_write, nothing else",
        pg.socket_dir().display(),
        pg.port()
    );

    step("postgres: a credential whose leases are login roles (the admin URL from a file, never argv)");
    let dsn = d.join("admin-dsn");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dsn)?
            .write_all(admin_url.as_bytes())?;
    }
    let dsn_s = dsn.to_string_lossy().into_owned();
    let added = ctl(&[
        "credential",
        "add",
        "app-db",
        "--kind",
        "postgres",
        "--connection-file",
        &dsn_s,
        "--grant",
        "read=GRANT app_read TO {{name}}",
        "--grant",
        "write=GRANT app_write TO {{name}}",
        "--ttl",
        "15m",
        "--max-ttl",
        "2h",
    ]);
    std::fs::remove_file(&dsn)?;
    ok(added?)?;
    eprint!("{}", ok(ctl(&["credential", "show", "app-db"])?)?);

    step("postgres: leash get app-db prints a connection URL (the password masked here, not by leash)");
    let doc: serde_json::Value =
        serde_json::from_str(&ok(get(&["get", "app-db", "--output", "json"])?)?)?;
    let password = doc["password"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(
        doc["kind"] == "postgres" && password.len() >= 32,
        "leash get app-db --output json did not give a postgres document"
    );
    let mut shown = doc.clone();
    shown["password"] = "<password>".into();
    shown["url"] = masked(doc["url"].as_str().unwrap_or_default(), &password).into();
    eprintln!("{}", serde_json::to_string_pretty(&shown)?);
    let url = ok(get(&["get", "app-db"])?)?;
    eprint!("{}", masked(&url, &password));
    anyhow::ensure!(
        url.trim() == doc["url"].as_str().unwrap_or_default(),
        "leash get app-db did not print the document's url"
    );
    let user = ok(get(&["get", "app-db", "--field", "user"])?)?;
    eprint!("{user}");
    let role = user.trim().to_string();
    let lease = doc["lease_id"].as_str().unwrap_or_default().to_string();
    let exists = format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'");
    anyhow::ensure!(
        role.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && pg.sql("app", &exists) == "1",
        "role {role:?} is not in the database"
    );
    eprintln!("in PostgreSQL (role | can log in | valid until | connection limit | comment):");
    eprintln!("{}", pg.sql("app", &format!(
        "SELECT rolname, rolcanlogin, rolvaliduntil, rolconnlimit, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{role}'"
    )));

    step("postgres: leash exec hands the URL to psql; the grant holds, the URL is masked in its output");
    let psql = bin.join("psql").to_string_lossy().into_owned();
    let script = format!(
        "{psql} \"$DATABASE_URL\" -X -A -t -c 'SELECT current_user, name FROM app.items'; \
         {psql} \"$DATABASE_URL\" -X -A -t -c \"INSERT INTO app.items VALUES (2, 'two')\" 2>&1 || echo '(the read grant refuses the INSERT)'; \
         echo \"the app sees DATABASE_URL=$DATABASE_URL\""
    );
    let out = ok(get(&[
        "exec",
        "--env",
        "DATABASE_URL=app-db:read",
        "--",
        "sh",
        "-c",
        &script,
    ])?)?;
    eprint!("{out}");
    anyhow::ensure!(
        out.contains("|one") && out.contains("<leash:app-db>") && !out.contains("postgresql://"),
        "psql did not read app.items through leash exec, or the URL was not masked"
    );

    step("postgres: a session open as the role; revoke --wait drops the role and cuts the session");
    let mut session = Command::new(&psql)
        .args(["-X", "-A", "-t"])
        .args(["-h", doc["host"].as_str().unwrap_or_default()])
        .args(["-p", &doc["port"].to_string()])
        .args([
            "-U",
            &role,
            "-d",
            doc["dbname"].as_str().unwrap_or_default(),
        ])
        .args(["-c", "SELECT pg_sleep(600)"])
        .env("PGPASSWORD", &password)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start psql as the lease's role")?;
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' AND state = 'active'"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.sql("app", &active) != "1" {
        if Instant::now() > deadline || session.try_wait()?.is_some() {
            let _ = session.kill();
            bail!("the session as role {role} did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("psql as {role} is running `SELECT pg_sleep(600)`");
    let out = ok(ctl(&[
        "revoke", "--lease", &lease, "--reason", "demo", "--wait",
    ])?)?;
    eprint!("{out}");
    // The drop terminates the role's sessions, then drops the role.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = session.try_wait()? {
            if pg.sql("app", &exists) == "0" {
                break st;
            }
        }
        if Instant::now() > deadline {
            let _ = session.kill();
            bail!("role {role} was still there, or its session open, 10s after revoke --wait returned");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = session.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut err)?;
    }
    eprintln!("the session ended ({status}): {}", err.trim());
    eprintln!("roles named {role}: {}", pg.sql("app", &exists));
    eprint!("{}", ok(ctl(&["lease", "show", &lease])?)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn the_demo_masks_the_password_it_prints() {
        assert_eq!(
            masked("postgresql://r:pw123@h:5432/app\n", "pw123"),
            "postgresql://r:<password>@h:5432/app\n"
        );
        assert_eq!(masked("x", ""), "x");
    }
}
