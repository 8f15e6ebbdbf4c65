//! A private PostgreSQL server for the destructive cases: `initdb` into a
//! temp dir and `pg_ctl` on a free loopback port, trust authentication,
//! database `test`. The shared server on 5432 is never touched.
//!
//! The binaries are the newest under `/usr/lib/postgresql/*/bin` (what
//! `scripts/services.sh` installs on Debian), else `initdb` / `pg_ctl` on
//! `PATH`. As root the cluster belongs to the `postgres` user (`initdb`
//! refuses to run as root) and the commands run through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idempotency_postgres::sqlx;

/// The directory of `initdb` and `pg_ctl`, when PostgreSQL is installed.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    if let Some((_, dir)) = dirs.pop() {
        return Some(dir);
    }
    let on_path = Command::new("initdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    on_path.then(PathBuf::new)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether a private server can be run; `false` prints a skip line, and
/// under CI this panics instead.
pub fn available() -> bool {
    let ok = bin_dir().is_some();
    if !ok {
        assert!(
            !super::env::in_ci(),
            "PostgreSQL binaries (initdb, pg_ctl) are not installed under CI"
        );
        println!("skipping: PostgreSQL binaries (initdb, pg_ctl) not found");
    }
    ok
}

/// A private PostgreSQL server, stopped (immediate) and removed on drop.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    root: bool,
    /// Server settings after the suite's own (`-c name=value ...`; a later
    /// `-c` of a name wins).
    settings: &'static str,
}

impl PrivatePostgres {
    /// Creates and starts a cluster with database `test`.
    ///
    /// # Panics
    ///
    /// `initdb` or `pg_ctl start` fails (with its output).
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// [`PrivatePostgres::start`] with more server settings, `-c name=value ...`.
    ///
    /// # Panics
    ///
    /// As [`PrivatePostgres::start`].
    pub async fn start_with(settings: &'static str) -> Self {
        let bin = bin_dir().expect("PostgreSQL binaries");
        let root = is_root();
        let dir = std::env::temp_dir().join(format!("idem-faults-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if root {
            run(Command::new("chown").args(["postgres:postgres", path(&dir)]));
        }
        let server = Self {
            port: super::env::free_port(),
            dir,
            bin,
            root,
            settings,
        };
        server.cmd(
            "initdb",
            &[
                "-D",
                path(&server.data()),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
            ],
        );
        server.pg_ctl("start");
        server.wait_ready().await;
        let admin = sqlx::PgPool::connect(&server.url_of("postgres"))
            .await
            .expect("connect to the private server");
        sqlx::query("CREATE DATABASE test")
            .execute(&admin)
            .await
            .expect("create database test");
        admin.close().await;
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn cmd(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd);
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off {}",
            self.port,
            path(&self.dir),
            self.settings
        );
        let log = self.dir.join("server.log");
        let data = self.data();
        let mut args = vec!["-D", path(&data), "-l", path(&log), "-w", "-t", "30"];
        match action {
            "start" => args.extend(["-o", &options, "start"]),
            "stop" => args.extend(["-m", "immediate", "stop"]),
            // What `pg_ctlcluster ... restart` does: a fast shutdown (every
            // session terminated, in-flight transactions rolled back), then
            // a start.
            "restart" => args.extend(["-m", "fast", "-o", &options, "restart"]),
            other => panic!("unknown pg_ctl action {other}"),
        }
        self.cmd("pg_ctl", &args);
    }

    /// Restarts the server (`pg_ctl restart -m fast`) and waits until it
    /// accepts connections; returns how long it was unreachable for.
    ///
    /// # Panics
    ///
    /// The server that answers afterwards is the one from before (its start
    /// time did not change).
    pub async fn restart(&self) -> Duration {
        let before = self.started_at().await;
        let start = Instant::now();
        self.pg_ctl("restart");
        self.wait_ready().await;
        let down = start.elapsed();
        assert_ne!(self.started_at().await, before, "the server restarted");
        down
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: every process killed,
    /// WAL still in shared memory lost, recovery at the next start), starts
    /// it again and waits until it accepts connections.
    pub async fn crash_and_start(&self) {
        self.pg_ctl("stop");
        self.pg_ctl("start");
        self.wait_ready().await;
    }

    /// `pg_postmaster_start_time()`, as text.
    async fn started_at(&self) -> String {
        let pool = sqlx::PgPool::connect(&self.url_of("postgres"))
            .await
            .expect("connect to the private server");
        let t: String = sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
            .fetch_one(&pool)
            .await
            .expect("start time");
        pool.close().await;
        t
    }

    /// `postgres://postgres@127.0.0.1:port/test`.
    pub fn url(&self) -> String {
        self.url_of("test")
    }

    fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(pool) = sqlx::PgPool::connect(&self.url_of("postgres")).await {
                pool.close().await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private PostgreSQL did not start: {}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let data = self.data();
        let _ = cmd
            .args(["-D", path(&data), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp dir")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
