//! Concurrent-duplicate throughput benchmark.
//!
//! Starts each server variant in its own child process on 127.0.0.1 (as
//! the peers always are; `--in-process` keeps this project's variants in
//! the load generator's process), drives it with an in-process hyper client
//! over keep-alive connections, and after every run
//! counts the handler's side effects per key, so a variant that executes a
//! key twice is flagged, not assumed away.
//!
//! Run with: `cargo run --release -p idempotency-benches -- --quick`
//! (full run: without `--quick`; `--help` lists the options).

mod client;
mod peer;
mod report;
mod server;

use std::time::Duration;

use report::{Report, Row};
use server::Variant;

/// A workload: which requests, in which order, against which handler delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Every key once.
    Unique,
    /// `keys` keys × `copies` copies, shuffled across connections.
    Duplicates,
    /// All copies of a key at once, key after key.
    Burst,
    /// Duplicates against a handler that takes 5 ms.
    Slow,
}

impl Workload {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unique" => Self::Unique,
            "duplicates" => Self::Duplicates,
            "burst" => Self::Burst,
            "slow" => Self::Slow,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Unique => "unique",
            Self::Duplicates => "duplicates",
            Self::Burst => "burst",
            Self::Slow => "slow",
        }
    }

    pub(crate) fn handler_delay(self) -> Duration {
        match self {
            Self::Slow => Duration::from_millis(5),
            _ => Duration::ZERO,
        }
    }
}

/// Command-line options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    variants: Vec<Variant>,
    workloads: Vec<Workload>,
    pub(crate) connections: usize,
    pub(crate) keys: usize,
    pub(crate) copies: usize,
    pub(crate) unique: usize,
    pub(crate) max_duration: Duration,
    pub(crate) rounds: usize,
    pub(crate) isolate: bool,
    json: Option<String>,
    markdown: Option<String>,
}

const HELP: &str = "\
idempotency-benches: concurrent-duplicate throughput, exactly-once checked

USAGE: cargo run --release -p idempotency-benches -- [OPTIONS]

  --quick               small run (200 keys x 20 copies, 2,000 unique, 1 round), under a minute
  --variants LIST       comma-separated: bare,memory,redis,redis-pooled,redis-cached,
                        postgres,postgres-tx,postgres-tx-async,postgres-cached,
                        axum-idempotent-{memory,redis,postgres},
                        idempotent-{memory,redis,postgres} (default: all)
  --workloads LIST      comma-separated: unique,duplicates,burst,slow (default: all)
  --connections N       concurrent keep-alive connections (default 64)
  --keys N              distinct keys for duplicates/burst/slow (default 1000)
  --copies N            copies of each key (default 50)
  --unique N            requests of the unique workload (default 20000)
  --max-seconds S       stop a run after S seconds whatever is left (default 120)
  --rounds N            run every variant x workload N times, round after round;
                        the tables show the median req/s run and the spread (default 3)
  --isolate             every server in its own child process, as the peers always
                        are (the default: the like-for-like comparison)
  --in-process          this harness's own variants inside the load generator's
                        process instead (peers stay child processes)
  --json PATH           also write the results as JSON
  --markdown PATH       also write the markdown table
  DATABASE_URL / REDIS_URL select the servers for the postgres and redis variants.
";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        variants: Variant::ALL.to_vec(),
        workloads: vec![
            Workload::Unique,
            Workload::Duplicates,
            Workload::Burst,
            Workload::Slow,
        ],
        connections: 64,
        keys: 1000,
        copies: 50,
        unique: 20_000,
        max_duration: Duration::from_secs(120),
        rounds: 3,
        isolate: true,
        json: None,
        markdown: None,
    };
    let mut args = std::env::args().skip(1);
    let num = |v: Option<String>, name: &str| -> Result<usize, String> {
        v.ok_or(format!("{name} needs a value"))?
            .parse::<usize>()
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|n| {
                if n == 0 {
                    Err(format!("{name} must be > 0"))
                } else {
                    Ok(n)
                }
            })
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--quick" => {
                o.keys = 200;
                o.copies = 20;
                o.unique = 2_000;
                o.connections = 32;
                o.max_duration = Duration::from_secs(20);
                o.rounds = 1;
            }
            "--variants" => {
                let v = args.next().ok_or("--variants needs a value")?;
                o.variants = v
                    .split(',')
                    .map(|s| Variant::parse(s).ok_or(format!("unknown variant {s}")))
                    .collect::<Result<_, _>>()?;
            }
            "--workloads" => {
                let v = args.next().ok_or("--workloads needs a value")?;
                o.workloads = v
                    .split(',')
                    .map(|s| Workload::parse(s).ok_or(format!("unknown workload {s}")))
                    .collect::<Result<_, _>>()?;
            }
            "--connections" => o.connections = num(args.next(), "--connections")?,
            "--keys" => o.keys = num(args.next(), "--keys")?,
            "--copies" => o.copies = num(args.next(), "--copies")?,
            "--unique" => o.unique = num(args.next(), "--unique")?,
            "--rounds" => o.rounds = num(args.next(), "--rounds")?,
            "--isolate" => o.isolate = true,
            "--in-process" => o.isolate = false,
            "--max-seconds" => {
                o.max_duration = Duration::from_secs(num(args.next(), "--max-seconds")? as u64)
            }
            "--json" => o.json = Some(args.next().ok_or("--json needs a path")?),
            "--markdown" => o.markdown = Some(args.next().ok_or("--markdown needs a path")?),
            other => return Err(format!("unknown option {other}\n\n{HELP}")),
        }
    }
    Ok(o)
}

/// `--serve VARIANT --workload W --bind ADDR`: the child side of `--isolate`.
fn serve(args: &[String]) -> Result<(), String> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .ok_or(format!("--serve needs {flag}"))
    };
    let variant = value("--serve").and_then(|v| {
        Variant::parse(v)
            .filter(|v| !matches!(v, Variant::Peer(..)))
            .ok_or(format!("--serve: not one of this harness's variants: {v}"))
    })?;
    let workload = value("--workload")
        .and_then(|w| Workload::parse(w).ok_or(format!("unknown workload {w}")))?;
    let bind = value("--bind")?
        .parse()
        .map_err(|e| format!("--bind: {e}"))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(server::serve_child(variant, workload, bind))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--serve") {
        if let Err(e) = serve(&args) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run_all(&opts));
    let md = report.markdown();
    println!("{md}");
    if let Some(path) = &opts.markdown {
        std::fs::write(path, &md).expect("write markdown");
    }
    if let Some(path) = &opts.json {
        std::fs::write(path, report.json()).expect("write json");
    }
    if report
        .rows
        .iter()
        .any(|r| r.protected && r.duplicate_executions > 0)
    {
        eprintln!("a protected variant executed a key more than once");
        std::process::exit(1);
    }
}

async fn run_all(opts: &Options) -> Report {
    let mut report = Report::new(opts);
    // Round after round (not variant after variant), so that a change in
    // the machine's load spreads over all variants instead of hitting one.
    for round in 1..=opts.rounds {
        run_round(opts, round, &mut report).await;
    }
    report
}

async fn run_round(opts: &Options, round: usize, report: &mut Report) {
    for &variant in &opts.variants {
        for &workload in &opts.workloads {
            eprintln!(
                "running {} / {} (round {round} of {})",
                variant.name(),
                workload.name(),
                opts.rounds
            );
            match server::start(variant, workload, opts.isolate).await {
                Ok(srv) => {
                    let plan = client::plan(workload, opts);
                    let stats = client::drive(srv.addr, srv.cookie.as_deref(), &plan, opts).await;
                    match srv.effects().await {
                        Ok(effects) => report
                            .rows
                            .push(Row::new(variant, workload, round, &plan, stats, effects)),
                        Err(e) => report.skipped.push(format!(
                            "{} / {}: side effects could not be counted: {e}",
                            variant.name(),
                            workload.name()
                        )),
                    }
                    srv.shutdown().await;
                }
                Err(e) => {
                    eprintln!("  skipped: {e}");
                    let line = format!("{} / {}: {e}", variant.name(), workload.name());
                    if !report.skipped.contains(&line) {
                        report.skipped.push(line);
                    }
                }
            }
        }
    }
}
