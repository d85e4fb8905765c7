//! A throwaway PostgreSQL server for tests and benchmarks: `initdb` in a temp dir, a Unix
//! socket in that dir and a free TCP port on 127.0.0.1, stopped (`pg_ctl stop -m
//! immediate`) when the [`Pg`] is dropped. PostgreSQL refuses to run as root, so as root
//! every server command runs as the unprivileged `postgres` user; as anyone else it runs
//! as that user. Nothing here uses a server it did not start.
//!
//! The server binaries are found in `$LEASH_PG_BIN`, else in the newest
//! `/usr/lib/postgresql/*/bin` (the Debian layout; `.ci/run` installs the `postgresql`
//! package where it is missing), else through `pg_config --bindir`.
//!
//! Authentication: the superuser `postgres` connects over the socket without a password
//! (`trust`, for the test's own set-up); every other role, over the socket or TCP, needs
//! its password (`scram-sha-256`), as on a real server.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The user the server runs as when the test runs as root.
const SERVER_USER: &str = "postgres";

/// A running throwaway server. See the module documentation.
#[derive(Debug)]
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
}

/// Where the server binaries are, or why they cannot be found.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("LEASH_PG_BIN") {
        let d = PathBuf::from(d);
        return if d.join("initdb").exists() {
            Ok(d)
        } else {
            Err(format!("$LEASH_PG_BIN={} has no initdb", d.display()))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && d.join("initdb").exists() {
            return Ok(d);
        }
    }
    Err(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package \
         `postgresql` (.ci/run does) or set $LEASH_PG_BIN to their directory"
            .into(),
    )
}

/// Whether a PostgreSQL server can be started here.
pub fn available() -> bool {
    bin_dir().is_ok()
}

impl Pg {
    /// Start a server with the test settings (durability off: the data is thrown away).
    pub fn start() -> Pg {
        Pg::start_with(&[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ])
    }

    /// Start a server with extra `name=value` settings.
    pub fn start_with(settings: &[&str]) -> Pg {
        let bin = bin_dir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("leash-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the PostgreSQL dir");
        let data = dir.path().join("data");
        let mut pg = Pg {
            dir,
            bin,
            port: 0,
            running: false,
        };
        if crate::is_root() {
            let st = Command::new("chown")
                .args([
                    &format!("{SERVER_USER}:{SERVER_USER}"),
                    &pg.dir().display().to_string(),
                ])
                .status()
                .expect("chown");
            assert!(st.success(), "chown the PostgreSQL dir to {SERVER_USER}");
        }
        let out = pg
            .server_command("initdb")
            .args(["-D", &data.display().to_string()])
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Only the superuser is trusted, and only over the socket.
        let hba = "local all postgres trust\n\
                   local all all scram-sha-256\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = 200\npassword_encryption = 'scram-sha-256'\n",
            pg.dir().display()
        );
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.auto.conf");
        std::fs::write(&conf_path, conf).expect("write postgresql.auto.conf");
        if crate::is_root() {
            let _ = Command::new("chown")
                .args(["-R", &format!("{SERVER_USER}:{SERVER_USER}")])
                .arg(&data)
                .status();
        }
        // A free port can be taken between the probe and the start: try a few.
        for attempt in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                return pg;
            }
            if attempt == 4 {
                panic!("PostgreSQL did not start:\n{}", pg.log());
            }
        }
        unreachable!()
    }

    fn try_start(&mut self) -> bool {
        let out = self
            .server_command("pg_ctl")
            .args(["-D", &self.data().display().to_string()])
            .args(["-l", &self.log_path().display().to_string()])
            .args(["-o", &format!("-p {}", self.port)])
            .args(["-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        self.running = out.status.success();
        self.running
    }

    /// The temp dir: the data directory and the socket are in it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("server.log")
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The directory of the Unix socket (`host=` for a socket connection).
    pub fn socket_dir(&self) -> &Path {
        self.dir()
    }

    /// The TCP port on 127.0.0.1 (also the number in the socket's file name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `user` with `password` over TCP to `db`.
    pub fn tcp_url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A connection URL for `user` with `password` over the Unix socket to `db`.
    pub fn socket_url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{password}@{}:{}/{db}",
            percent_path(self.socket_dir()),
            self.port
        )
    }

    /// Run `sql` in `db` as the superuser with `psql` (stop at the first error).
    pub fn psql(&self, db: &str, sql: &str) -> Output {
        self.psql_command(db)
            .args(["-c", sql])
            .output()
            .expect("run psql")
    }

    /// A `psql` command for the superuser on `db` (unaligned, tuples only, stop on error).
    pub fn psql_command(&self, db: &str) -> Command {
        let mut c = self.server_command("psql");
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.socket_dir().display().to_string()])
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db]);
        c
    }

    /// Run `sql` in `db` as the superuser; its output (trimmed). Panics with psql's error.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.psql(db, sql);
        assert!(
            out.status.success(),
            "psql on {db} failed: {}\nSQL: {sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Set up what the docs' least-privilege admin looks like: database `app` with schema
    /// `app` and table `app.items (id int, name text)` holding one row, and the login role
    /// `leash_admin` (password `admin_password`) with `CREATEROLE`, `pg_signal_backend`
    /// (to cut a dropped role's sessions) and every right on the schema's tables WITH
    /// GRANT OPTION (to pass them on), and nothing else; and the group roles `app_read`
    /// (USAGE and SELECT on the schema) and `app_write` (and INSERT, UPDATE, DELETE), which
    /// `leash_admin` may grant (WITH ADMIN OPTION): the set-up docs/DATABASES.md
    /// recommends. Returns the admin's URL over the socket.
    pub fn app_database(&self, admin_password: &str) -> String {
        self.sql("postgres", "CREATE DATABASE app");
        let setup = format!(
            "CREATE ROLE leash_admin LOGIN CREATEROLE PASSWORD '{admin_password}';\n\
             GRANT pg_signal_backend TO leash_admin;\n\
             CREATE SCHEMA app;\n\
             CREATE TABLE app.items (id int PRIMARY KEY, name text);\n\
             INSERT INTO app.items VALUES (1, 'one');\n\
             GRANT USAGE ON SCHEMA app TO leash_admin WITH GRANT OPTION;\n\
             GRANT ALL ON ALL TABLES IN SCHEMA app TO leash_admin WITH GRANT OPTION;\n\
             GRANT CONNECT ON DATABASE app TO leash_admin WITH GRANT OPTION;\n\
             CREATE ROLE app_read NOLOGIN;\n\
             GRANT USAGE ON SCHEMA app TO app_read;\n\
             GRANT SELECT ON ALL TABLES IN SCHEMA app TO app_read;\n\
             CREATE ROLE app_write NOLOGIN;\n\
             GRANT USAGE ON SCHEMA app TO app_write;\n\
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO app_write;\n\
             GRANT app_read, app_write TO leash_admin WITH ADMIN OPTION;"
        );
        let out = self
            .psql_command("app")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(setup.as_bytes())?;
                c.wait_with_output()
            })
            .expect("run psql");
        assert!(
            out.status.success(),
            "setting up database app failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.socket_url("leash_admin", admin_password, "app")
    }

    /// Stop the server, as a database outage (`pg_ctl stop -m fast`).
    pub fn stop(&mut self) {
        self.stop_with("fast");
    }

    /// Stop the server as a crash would (`pg_ctl stop -m immediate`: no shutdown
    /// checkpoint; the next start replays the WAL).
    pub fn crash(&mut self) {
        self.stop_with("immediate");
    }

    fn stop_with(&mut self, mode: &str) {
        if self.running {
            let _ = self
                .server_command("pg_ctl")
                .args(["-D", &self.data().display().to_string()])
                .args(["-m", mode, "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.running = false;
        }
    }

    /// Start it again after [`Pg::stop`], on the same port.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.try_start() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start again:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A server program (`initdb`, `pg_ctl`, `psql`) from the server's bin dir, run as
    /// the server user when we are root.
    pub fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let path = if path.exists() {
            path
        } else {
            PathBuf::from(program)
        };
        let mut c = if crate::is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                SERVER_USER,
                "--regid",
                SERVER_USER,
                "--init-groups",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        };
        // A caller's libpq settings must not leak into the test's own server.
        for v in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGSERVICE",
        ] {
            c.env_remove(v);
        }
        c.current_dir(self.dir());
        c
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .server_command("pg_ctl")
                .args(["-D", &self.data().display().to_string()])
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A directory as the host part of a libpq URL (`/tmp/x` → `%2Ftmp%2Fx`).
pub fn percent_path(p: &Path) -> String {
    let mut out = String::new();
    for b in p.display().to_string().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The environment variable that runs every [`crate::Cluster`] on PostgreSQL:
/// `LEASH_TEST_STORE=postgres` (anything else, or unset: sled).
pub const TEST_STORE_ENV: &str = "LEASH_TEST_STORE";

/// The login role of the shared server's store databases, and its password.
const STORE_ROLE: &str = "leash_store";
const STORE_ROLE_PW: &str = "leash-store-test-pw";

/// Whether this test run keeps the control planes' state in PostgreSQL.
pub fn store_is_postgres() -> bool {
    std::env::var(TEST_STORE_ENV).is_ok_and(|v| v == "postgres")
}

/// The one server of this test process for control-plane stores, started on first use
/// and stopped (its directory removed) by a watcher once the process has exited: a
/// `static` is never dropped.
pub fn shared() -> &'static Pg {
    static SHARED: std::sync::OnceLock<Pg> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let mut pg = Pg::start();
        pg.sql(
            "postgres",
            &format!("CREATE ROLE {STORE_ROLE} LOGIN PASSWORD '{STORE_ROLE_PW}'"),
        );
        let stop = pg
            .server_command("pg_ctl")
            .args(["-D", &pg.data().display().to_string()])
            .args(["-m", "immediate", "-w", "stop"])
            .get_args()
            .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let program = pg.server_command("pg_ctl").get_program().to_string_lossy().into_owned();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; '{program}' {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = pg.dir().display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        // The watcher stops it; dropping it here would too early.
        pg.running = false;
        pg
    })
}

/// A fresh, empty database on the [`shared`] server for one control plane's store; the
/// URL (over the socket, with the store role's password) to put in its `url_file`.
pub fn fresh_store_database() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let pg = shared();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db = format!("leash_{n}");
    pg.sql(
        "postgres",
        &format!("CREATE DATABASE {db} OWNER {STORE_ROLE}"),
    );
    pg.socket_url(STORE_ROLE, STORE_ROLE_PW, &db)
}
