//! A private `redis-server` for the destructive cases (restart, `CLIENT
//! PAUSE`), on a free loopback port, in a temp dir. The shared server on
//! 6379 is never touched.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `redis-server` can be run; `false` prints a skip line, and under
/// CI this panics instead.
pub fn available() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !super::env::in_ci(),
            "redis-server is not installed under CI"
        );
        println!("skipping: redis-server unavailable");
    }
    ok
}

/// Persistence of a private server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// None: a restart forgets everything.
    None,
    /// AOF with `appendfsync always`: every acknowledged write survives a
    /// restart.
    AofAlways,
}

/// A private `redis-server`, killed and removed on drop.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    persistence: Persistence,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server.
    pub fn start(persistence: Persistence) -> Self {
        let dir = std::env::temp_dir().join(format!("idem-faults-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Self {
            port: super::env::free_port(),
            dir,
            persistence,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(["--dir", self.dir.to_str().expect("utf-8 temp dir")]);
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::AofAlways => cmd
                .args(["--appendonly", "yes"])
                .args(["--appendfsync", "always"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        self.wait_ready();
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one inline command and returns the raw reply.
    pub fn command(&self, cmd: &str) -> String {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1))
                .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.write_all(format!("{cmd}\r\n").as_bytes()).expect("write");
        let mut buf = vec![0; 64 * 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        let mut buf = [0; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while !self.ping() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL), starts it again on the same port and
    /// waits until it answers; returns how long it was unreachable for.
    pub fn restart(&mut self) -> Duration {
        let start = Instant::now();
        self.kill();
        self.spawn();
        start.elapsed()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A field of `INFO clients`, e.g. `blocked_clients`.
    pub fn info_clients(&self, field: &str) -> u64 {
        let info = self.command("INFO clients");
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in INFO clients: {info}"))
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
