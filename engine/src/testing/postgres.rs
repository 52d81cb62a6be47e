//! A throwaway PostgreSQL server for tests: the distribution's own binaries, `initdb` and
//! `pg_ctl` in a temporary folder, listening on a Unix socket in that folder only (no TCP
//! port: `listen_addresses = ''`), with `fsync = on` so that durability is measured as it will
//! be served. One server per test binary ([`shared`]); each test makes its own database
//! ([`PgServer::database`]).
//!
//! PostgreSQL refuses to run as root, and tests and CI run as root: then `initdb` and `pg_ctl`
//! run as the `postgres` system user (made by the Debian package) through `runuser`, and the
//! temporary folder is handed to that user. As any other user they run directly.
//!
//! The binaries are found through `GATEWARDEN_PG_BINDIR`, then `pg_config --bindir`, then the
//! newest `/usr/lib/postgresql/*/bin`. Without them, [`shared`] returns `None` (tests skip)
//! unless `GATEWARDEN_REQUIRE_POSTGRES=1`, when it panics: CI must not skip them.
//!
//! The server is stopped (`pg_ctl stop -m immediate`) and its folder removed on drop. The
//! shared server lives in a `static`, which is never dropped; a small watchdog process does
//! the same when the test process has gone.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The PostgreSQL superuser the test server is made with (trust authentication, socket only).
const SUPERUSER: &str = "gw";

/// A running throwaway server.
#[derive(Debug)]
pub struct PgServer {
    root: PathBuf,
    bindir: PathBuf,
    run_as_postgres: bool,
    next_db: AtomicU64,
}

/// Why a test server could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgServerError {
    /// No PostgreSQL binaries on this machine.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install Debian's postgresql \
         package, or set GATEWARDEN_PG_BINDIR"
    )]
    NotInstalled,
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Failed {
        /// What was being done.
        step: &'static str,
        /// Its output or error.
        detail: String,
    },
}

fn failed(step: &'static str, detail: impl Into<String>) -> PgServerError {
    PgServerError::Failed {
        step,
        detail: detail.into(),
    }
}

/// The server shared by every test of this process, started on first use; `None` when
/// PostgreSQL is not installed and `GATEWARDEN_REQUIRE_POSTGRES` is not `1`.
///
/// # Panics
/// When the server cannot be started, or is missing while `GATEWARDEN_REQUIRE_POSTGRES=1`.
pub fn shared() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| match PgServer::start() {
        Ok(server) => {
            server.watch_for_exit();
            Ok(server)
        }
        Err(e) => Err(e.to_string()),
    });
    match server {
        Ok(server) => Some(server),
        Err(e) if std::env::var("GATEWARDEN_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("GATEWARDEN_REQUIRE_POSTGRES=1 but the test server cannot run: {e}")
        }
        Err(e) if bindir().is_none() => {
            eprintln!("skipping a PostgreSQL test: {e}");
            None
        }
        Err(e) => panic!("the PostgreSQL test server did not start: {e}"),
    }
}

/// Where the server binaries are, if anywhere.
pub fn bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("GATEWARDEN_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return has_server(&dir).then_some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Some(dir);
        }
    }
    // Debian: /usr/lib/postgresql/<major>/bin; the newest major wins.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The effective user id, from `/proc/self/status` (no libc binding needed).
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

impl PgServer {
    /// Makes a new cluster in a temporary folder and starts it.
    ///
    /// # Errors
    /// [`PgServerError::NotInstalled`] without binaries; [`PgServerError::Failed`] when a
    /// step fails, with its output.
    pub fn start() -> Result<Self, PgServerError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let bindir = bindir().ok_or(PgServerError::NotInstalled)?;
        let run_as_postgres = euid() == Some(0);
        let root = std::env::temp_dir().join(format!(
            "gatewarden-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&root)
            .map_err(|e| failed("making the server's folder", e.to_string()))?;
        // The server trusts every connection to its socket (a superuser with no password), so
        // nobody but its owner may reach the socket: the folder and the socket are owner-only
        // (root, which runs the tests in CI, passes anyway).
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| failed("making the server's folder owner-only", e.to_string()))?;
        let server = Self {
            root,
            bindir,
            run_as_postgres,
            next_db: AtomicU64::new(0),
        };
        if run_as_postgres {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&server.root)
                .output()
                .map_err(|e| failed("handing the folder to the postgres user", e.to_string()))?;
            if !out.status.success() {
                return Err(failed(
                    "handing the folder to the postgres user (is there a postgres user?)",
                    String::from_utf8_lossy(&out.stderr),
                ));
            }
        }
        server.run(
            "initdb",
            "initdb",
            &[
                OsStr::new("-D"),
                server.data_dir().as_os_str(),
                OsStr::new("-U"),
                OsStr::new(SUPERUSER),
                OsStr::new("--auth=trust"),
                OsStr::new("--no-sync"),
                OsStr::new("--encoding=UTF8"),
                OsStr::new("--locale=C"),
            ],
        )?;
        let conf = format!(
            "\n# gatewarden test server\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\n\
             port = 5432\nfsync = on\nsynchronous_commit = on\nmax_connections = 200\n\
             shared_buffers = 64MB\n",
            server.root.display()
        );
        append(&server.data_dir().join("postgresql.conf"), &conf)
            .map_err(|e| failed("configuring the server", e.to_string()))?;
        let log = server.root.join("server.log");
        server.run(
            "pg_ctl start",
            "pg_ctl",
            &[
                OsStr::new("start"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
                OsStr::new("-D"),
                server.data_dir().as_os_str(),
                OsStr::new("-l"),
                log.as_os_str(),
            ],
        )?;
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The folder that holds the server's socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// A URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgresql:///{name}?host={}&port=5432&user={SUPERUSER}",
            self.root.display()
        )
    }

    /// Runs `sql` (one or more statements, no parameters) on the database at `url` and
    /// returns the rows they return, each value as text (`None` for NULL): for
    /// tests that look into the database or act on it as its administrator would.
    ///
    /// # Errors
    /// [`PgServerError::Failed`] when the connection or a statement fails.
    pub fn execute(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgServerError> {
        let mut client = postgres::Client::connect(url, postgres::NoTls)
            .map_err(|e| failed("connecting to the test server", e.to_string()))?;
        let messages = client
            .simple_query(sql)
            .map_err(|e| failed("running a test statement", e.to_string()))?;
        let mut rows = Vec::new();
        for message in messages {
            if let postgres::SimpleQueryMessage::Row(row) = message {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
        }
        Ok(rows)
    }

    /// Makes a new, empty database and returns its URL.
    ///
    /// # Errors
    /// [`PgServerError::Failed`] when the server refuses.
    pub fn database(&self) -> Result<String, PgServerError> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| failed("connecting to the test server", e.to_string()))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| failed("making a test database", e.to_string()))?;
        Ok(self.url(&name))
    }

    /// Runs a server binary, as the postgres user when we are root.
    fn run(&self, step: &'static str, program: &str, args: &[&OsStr]) -> Result<(), PgServerError> {
        let exe = self.bindir.join(program);
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // The server must not inherit the test harness's pipes: pg_ctl would wait on them.
        let out = cmd
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed(step, format!("cannot run {}: {e}", exe.display())))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
            Err(failed(
                step,
                format!(
                    "{}{}{log}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ))
        }
    }

    /// The shell command that stops the server at once and removes its folder.
    fn stop_command(&self) -> String {
        let pg_ctl = self.bindir.join("pg_ctl");
        let stop = format!(
            "'{}' stop -m immediate -w -D '{}'",
            pg_ctl.display(),
            self.data_dir().display()
        );
        let stop = if self.run_as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        format!("{stop} >/dev/null 2>&1; rm -rf '{}'", self.root.display())
    }

    /// Starts a watchdog that stops the server and removes its folder once this process has
    /// exited (a `static` server is never dropped).
    fn watch_for_exit(&self) {
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; {}",
            std::process::id(),
            self.stop_command()
        );
        let spawned = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("cannot start the PostgreSQL test server's watchdog: {e}");
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &self.stop_command()])
            .stdin(Stdio::null())
            .status();
    }
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())
}
