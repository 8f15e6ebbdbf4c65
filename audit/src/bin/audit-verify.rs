//! Verifies the hash chains of the PostgreSQL audit trail.
//!
//! ```text
//! DATABASE_URL=postgres://auditor@db/app audit-verify [--stream NAME]... [--schema NAME] [--batch ROWS] [--connect-timeout SECS]
//! ```
//!
//! Prints one line per stream, one more per break of a broken stream (every
//! break, not only the first), and a summary. Exit status: 0 when every
//! chain is intact, 1 when at least one is broken, 2 on a usage or database error.
//!
//! The subcommands `keygen`, `checkpoint`, `prove`, `verify-proof` and
//! `export` handle signed checkpoints and proofs (see `audit_verify/tlog.rs`).

use std::process::ExitCode;
use std::time::Duration;

use idempotency_audit::postgres::PostgresSink;
use sqlx::postgres::PgPoolOptions;

#[path = "audit_verify/tlog.rs"]
mod tlog;

const USAGE: &str =
    "usage: audit-verify [--stream NAME]... [--schema NAME] [--batch ROWS] [--connect-timeout SECS]

Verifies the audit hash chains in the database named by DATABASE_URL.
  --stream NAME   verify this stream (repeatable); default: every stream
  --schema NAME   the audit schema (default: audit)
  --batch ROWS    sequence numbers read per statement (default: 100000)
  --connect-timeout SECS  give up connecting after this long (default: 10)
Exit status: 0 all intact, 1 a chain is broken, 2 usage or database error.
Checkpoints and proofs: audit-verify keygen|checkpoint|prove|verify-proof|export --help";

#[derive(Debug)]
struct Args {
    streams: Vec<String>,
    schema: String,
    batch: usize,
    connect_timeout: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        streams: Vec::new(),
        schema: idempotency_audit::postgres::DEFAULT_SCHEMA.to_owned(),
        batch: 100_000,
        connect_timeout: Duration::from_secs(10),
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--stream" => parsed.streams.push(value("--stream")?),
            "--schema" => parsed.schema = value("--schema")?,
            "--batch" => {
                parsed.batch = value("--batch")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--batch needs a positive number")?;
            }
            "--connect-timeout" => {
                parsed.connect_timeout = value("--connect-timeout")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or("--connect-timeout needs a positive number of seconds")?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if let Some(sub) = argv.next_if(|a| tlog::is_subcommand(a)) {
        return tlog::main(&sub, argv.collect()).await;
    }
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("audit-verify: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(msg) => {
            eprintln!("audit-verify: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether every verified chain is intact.
async fn run(args: Args) -> Result<bool, String> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_owned())?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(args.connect_timeout)
        .connect(&url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let sink = PostgresSink::new(pool)
        .with_schema(&args.schema)
        .map_err(|e| e.to_string())?
        .with_verify_batch(args.batch);

    let (mut streams, mut events, mut broken, mut breaks) = (0u64, 0u64, 0u64, 0u64);
    let mut check = async |stream: &str| -> Result<(), String> {
        let report = sink
            .verify(stream)
            .await
            .map_err(|e| format!("verifying {stream:?}: {}", error_chain(&e)))?;
        println!("{report}");
        streams += 1;
        events += report.events;
        broken += u64::from(!report.is_intact());
        breaks += report.break_count;
        Ok(())
    };
    if args.streams.is_empty() {
        let mut after: Option<String> = None;
        while let Some(stream) = sink
            .next_stream(after.as_deref())
            .await
            .map_err(|e| format!("listing streams: {}", error_chain(&e)))?
        {
            check(&stream).await?;
            after = Some(stream);
        }
    } else {
        for stream in &args.streams {
            check(stream).await?;
        }
    }
    println!("verified {streams} streams, {events} events: {broken} broken, {breaks} breaks");
    Ok(broken == 0)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_flags() {
        let a = parse(&[
            "--stream",
            "a",
            "--stream=b",
            "--schema",
            "x",
            "--batch=10",
            "--connect-timeout",
            "3",
        ])
        .unwrap();
        assert_eq!(a.streams, ["a", "b"]);
        assert_eq!(a.connect_timeout, Duration::from_secs(3));
        assert_eq!((a.schema.as_str(), a.batch), ("x", 10));
        let d = parse(&[]).unwrap();
        assert!(d.streams.is_empty());
        assert_eq!((d.schema.as_str(), d.batch), ("audit", 100_000));
    }

    #[test]
    fn rejects_bad_usage() {
        assert!(parse(&["--stream"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--batch", "0"]).is_err());
        assert!(parse(&["--batch", "x"]).is_err());
        assert!(parse(&["--connect-timeout", "0"]).is_err());
        assert!(parse(&["stream"]).unwrap_err().contains("unknown argument"));
        assert_eq!(parse(&["--help"]).err().as_deref(), Some(""));
    }
}
