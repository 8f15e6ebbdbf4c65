//! What every case shares: the bounded (CI) or full trial counts, one case
//! at a time, the example binaries, free ports, the effect journal and the
//! figures each case reports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub use idempotency_core::conformance::support::{database_url, in_ci, redis_url};

/// `FAULTS_FULL=1`: the full matrix (the figures of `RELIABILITY.md`);
/// otherwise the CI subset, every case once with bounded counts.
pub fn full() -> bool {
    std::env::var("FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// `ci` trials in the CI subset, `full` in the full matrix.
pub fn trials(ci: usize, full: usize) -> usize {
    if self::full() { full } else { ci }
}

/// One case at a time: the cases measure recovery times and start servers
/// and processes, and must not share two cores with each other.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The example binaries, built once per test process
/// (`cargo build -p example-quickstart -p example-promotion`).
pub struct Binaries {
    pub quickstart: PathBuf,
    pub promotion: PathBuf,
}

pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "example-quickstart",
                "-p",
                "example-promotion",
            ])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the examples failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let bin = |name: &str| {
            let p = target
                .join("debug")
                .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            assert!(p.exists(), "{} not found", p.display());
            p
        };
        Binaries {
            quickstart: bin("example-quickstart"),
            promotion: bin("example-promotion"),
        }
    })
}

/// A database of the case's own on the shared PostgreSQL server, dropped
/// (`WITH (FORCE)`) when the case ends: the example services migrate their
/// schemas (`idempotency`, `audit`, `promotion`) into it, so other suites
/// using the shared `test` database, and their schema versions, never meet
/// the case's.
pub struct CaseDatabase {
    pub url: String,
    pub pool: idempotency_postgres::sqlx::PgPool,
    name: String,
    admin: String,
}

impl Drop for CaseDatabase {
    fn drop(&mut self) {
        let (admin, name, pool) = (self.admin.clone(), self.name.clone(), self.pool.clone());
        // A runtime of its own: drop runs inside the case's runtime.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                pool.close().await;
                let admin = idempotency_postgres::sqlx::PgPool::connect(&admin).await?;
                idempotency_postgres::sqlx::query(idempotency_postgres::sqlx::AssertSqlSafe(
                    format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                ))
                .execute(&admin)
                .await?;
                admin.close().await;
                Ok::<_, idempotency_postgres::sqlx::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop the case database {}: {dropped:?}",
                self.name
            );
        }
    }
}

/// A new [`CaseDatabase`] when the shared PostgreSQL answers; `None` prints
/// a skip line, and under CI this panics instead.
pub async fn shared_postgres() -> Option<CaseDatabase> {
    use idempotency_postgres::sqlx;
    let admin = database_url();
    let pool = match sqlx::PgPool::connect(&admin).await {
        Ok(p) => p,
        Err(e) => {
            assert!(!in_ci(), "PostgreSQL at {admin} unreachable under CI: {e}");
            println!("skipping: PostgreSQL at {admin} unreachable");
            return None;
        }
    };
    let name = format!("idem_faults_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&pool)
        .await
        .expect("create the case database");
    pool.close().await;
    let mut url = admin.clone();
    let path = url.rfind('/').expect("a database URL names its database");
    url.replace_range(path + 1.., &name);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .expect("connect to the case database");
    Some(CaseDatabase {
        url,
        pool,
        name,
        admin,
    })
}

/// Whether the shared Redis answers; as [`shared_postgres`].
pub async fn shared_redis() -> bool {
    let url = redis_url();
    let ok = match idempotency_redis::redis::Client::open(url.as_str()) {
        Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
        Err(_) => false,
    };
    if !ok {
        assert!(!in_ci(), "Redis at {url} unreachable under CI");
        println!("skipping: Redis at {url} unreachable");
    }
    ok
}

/// The effect journal of one case (`EXAMPLE_EFFECT_LOG`): one line per
/// side effect, written by the service processes.
pub struct Journal {
    pub path: PathBuf,
}

impl Journal {
    pub fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("idem-faults-effects-{}.log", uuid::Uuid::new_v4()));
        Self { path }
    }

    /// Every line.
    pub fn lines(&self) -> Vec<String> {
        read(&self.path)
    }

    /// Lines naming `what` as a whole word (an order's SKU).
    pub fn count(&self, what: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.split(' ').any(|w| w == what))
            .count()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What one case measured, printed as one `FAULTS` line and, with
/// `FAULTS_REPORT=<file>`, appended to that file as one JSON line (the
/// source of `RELIABILITY.md`'s tables).
#[derive(Debug, Default)]
pub struct Figures {
    pub case: &'static str,
    pub store: &'static str,
    pub point: &'static str,
    pub trials: usize,
    pub faults: usize,
    pub duplicates: usize,
    /// What the guarantee says about duplicates: `0`, or why the case
    /// expects one per fault (an effect outside the store's transaction,
    /// run again after a crash).
    pub guarantee: &'static str,
    pub recoveries: Vec<Duration>,
    pub extra: Vec<(&'static str, String)>,
}

/// The `p`th percentile (nearest rank) of `values`, in milliseconds.
pub fn percentile_ms(values: &[Duration], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

impl Figures {
    pub fn report(&self) {
        let p50 = percentile_ms(&self.recoveries, 50.0);
        let p99 = percentile_ms(&self.recoveries, 99.0);
        let mut json = serde_json::json!({
            "case": self.case,
            "store": self.store,
            "point": self.point,
            "trials": self.trials,
            "faults": self.faults,
            "duplicates": self.duplicates,
            "guarantee": self.guarantee,
            "recovery_p50_ms": p50.map(|v| (v * 10.0).round() / 10.0),
            "recovery_p99_ms": p99.map(|v| (v * 10.0).round() / 10.0),
            "full": full(),
        });
        for (k, v) in &self.extra {
            json[*k] = serde_json::Value::String(v.clone());
        }
        println!("FAULTS {json}");
        if let Ok(path) = std::env::var("FAULTS_REPORT") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open FAULTS_REPORT");
            writeln!(f, "{json}").expect("write FAULTS_REPORT");
        }
    }
}
