//! The checkpoint and proof subcommands of `audit-verify`: `keygen`,
//! `checkpoint`, `prove`, `verify-proof` (offline) and `export`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use idempotency_audit::EventTime;
use idempotency_audit::postgres::{DEFAULT_SCHEMA, PostgresSink, PostgresTlog};
use idempotency_audit::tlog::{
    ConsistencyProof, DirStore, InclusionProof, NoteSigner, NoteVerifier, TlogError,
};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;

pub(crate) const SUBCOMMANDS: [&str; 5] =
    ["keygen", "checkpoint", "prove", "verify-proof", "export"];

pub(crate) const USAGE: &str = "\
usage: audit-verify keygen --name NAME --out PREFIX
       audit-verify checkpoint --key FILE --dir DIR [--stream NAME]... [DB options]
       audit-verify checkpoint --check --pub FILE --dir DIR [--stream NAME]... [DB options]
       audit-verify prove --pub FILE --dir DIR --stream NAME --seq N [--size N] [--event-out FILE] [--out FILE] [DB options]
       audit-verify prove --pub FILE --dir DIR --stream NAME --consistency OLD [--size NEW] [--out FILE] [DB options]
       audit-verify verify-proof --pub FILE --proof FILE [--event FILE]
       audit-verify verify-proof --pub FILE --export FILE
       audit-verify export --pub FILE --dir DIR --since RFC3339 [--stream NAME]... [--out FILE] [DB options]

Signed checkpoints (C2SP tlog-checkpoint, Ed25519) of each stream's RFC 6962
Merkle tree, kept in DIR outside the database, and proofs against them.
  keygen        write PREFIX.key (signer key, mode 0600) and PREFIX.pub (verifier key)
  checkpoint    sign and store a checkpoint of each stream; refused (exit 1) when the
                table does not extend the stream's latest checkpoint.
                --check: no signing; recompute every hash from the stored content and
                compare with the latest checkpoint (exit 1 on a difference)
  prove         an inclusion proof of event --seq, or a consistency proof from the
                checkpoint of size --consistency, against the latest checkpoint (or --size)
  verify-proof  offline, from the proof, the event and the verifier key alone; --export
                checks every line of an export file
  export        events at or after --since as CloudEvents JSON lines, each with its
                inclusion proof against the latest checkpoint of its stream
DB options: --schema NAME (default audit), --connect-timeout SECS (default 10); the
database is DATABASE_URL.
Exit status: 0 ok, 1 a check or proof failed or a checkpoint was refused, 2 usage or other error.";

/// Whether `arg` names a subcommand of this module.
pub(crate) fn is_subcommand(arg: &str) -> bool {
    SUBCOMMANDS.contains(&arg)
}

/// Flags taking a value, and switches.
const VALUED: [&str; 16] = [
    "--export",
    "--name",
    "--out",
    "--key",
    "--pub",
    "--dir",
    "--stream",
    "--schema",
    "--connect-timeout",
    "--seq",
    "--size",
    "--event-out",
    "--consistency",
    "--proof",
    "--event",
    "--since",
];
const SWITCHES: [&str; 1] = ["--check"];

#[derive(Debug, Default)]
struct Flags {
    values: HashMap<&'static str, Vec<String>>,
    switches: Vec<&'static str>,
}

impl Flags {
    fn parse(sub: &str, args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut flags = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg, None),
            };
            if flag == "-h" || flag == "--help" {
                return Err(String::new());
            }
            if let Some(name) = VALUED.iter().find(|n| **n == flag) {
                let value = inline
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))?;
                flags.values.entry(name).or_default().push(value);
            } else if let Some(name) = SWITCHES.iter().find(|n| **n == flag) {
                flags.switches.push(name);
            } else {
                return Err(format!("{sub}: unknown argument {flag:?}"));
            }
        }
        Ok(flags)
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.one(name).ok_or_else(|| format!("{name} is required"))
    }

    fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.one(name)
            .map(|v| {
                v.parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name} needs a positive number"))
            })
            .transpose()
    }

    fn switch(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }
}

/// An error of the command: 1 for a failed check, 2 for anything else.
enum Failure {
    Check(String),
    Other(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Self::Other(s)
    }
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

/// Proof and checkpoint failures are check failures; the rest are errors.
fn failure(e: &TlogError) -> Failure {
    let msg = error_chain(e);
    match e {
        TlogError::Proof(_)
        | TlogError::Inconsistent { .. }
        | TlogError::Broken { .. }
        | TlogError::UnverifiedNote { .. } => Failure::Check(msg),
        _ => Failure::Other(msg),
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

fn write_out(path: Option<&str>, text: &str) -> Result<(), String> {
    match path {
        None => {
            println!("{text}");
            Ok(())
        }
        Some(p) => std::fs::write(p, format!("{text}\n")).map_err(|e| format!("writing {p}: {e}")),
    }
}

fn verifier(flags: &Flags) -> Result<NoteVerifier, String> {
    let path = flags.required("--pub")?;
    NoteVerifier::from_text(&read(path)?).map_err(|e| format!("{path}: {e}"))
}

fn signer(flags: &Flags) -> Result<NoteSigner, String> {
    let path = flags.required("--key")?;
    let text = zeroize::Zeroizing::new(read(path)?);
    NoteSigner::from_text(&text).map_err(|e| format!("{path}: {e}"))
}

async fn sink(flags: &Flags) -> Result<PostgresSink, String> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_owned())?;
    let timeout = flags
        .number("--connect-timeout")?
        .map_or(Duration::from_secs(10), Duration::from_secs);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(timeout)
        .connect(&url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    PostgresSink::new(pool)
        .with_schema(flags.one("--schema").unwrap_or(DEFAULT_SCHEMA))
        .map_err(|e| e.to_string())
}

/// The streams named with `--stream`, or every stream of the schema.
async fn streams(flags: &Flags, sink: &PostgresSink) -> Result<Vec<String>, String> {
    if !flags.all("--stream").is_empty() {
        return Ok(flags.all("--stream").to_vec());
    }
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    while let Some(s) = sink
        .next_stream(after.as_deref())
        .await
        .map_err(|e| format!("listing streams: {}", error_chain(&e)))?
    {
        all.push(s.clone());
        after = Some(s);
    }
    Ok(all)
}

/// Runs subcommand `sub` with its arguments.
pub(crate) async fn main(sub: &str, args: Vec<String>) -> ExitCode {
    let flags = match Flags::parse(sub, args) {
        Ok(f) => f,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("audit-verify: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match sub {
        "keygen" => keygen(&flags),
        "checkpoint" if flags.switch("--check") => check(&flags).await,
        "checkpoint" => checkpoint(&flags).await,
        "prove" => prove(&flags).await,
        "verify-proof" => verify_proof(&flags),
        "export" => export(&flags).await,
        other => Err(Failure::Other(format!("unknown subcommand {other:?}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Check(msg)) => {
            eprintln!("audit-verify {sub}: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("audit-verify {sub}: {msg}");
            ExitCode::from(2)
        }
    }
}

fn keygen(flags: &Flags) -> Result<(), Failure> {
    let name = flags.required("--name")?;
    let prefix = flags.required("--out")?;
    let signer = NoteSigner::generate(name).map_err(|e| e.to_string())?;
    let (key, public) = (format!("{prefix}.key"), format!("{prefix}.pub"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&key)
        .map_err(|e| format!("creating {key}: {e}"))?;
    file.write_all(format!("{}\n", signer.to_secret_text().as_str()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing {key}: {e}"))?;
    let verifier = signer.verifier().to_string();
    std::fs::write(&public, format!("{verifier}\n"))
        .map_err(|e| format!("writing {public}: {e}"))?;
    println!("{verifier}");
    Ok(())
}

async fn checkpoint(flags: &Flags) -> Result<(), Failure> {
    let signer = signer(flags)?;
    let dir = flags.required("--dir")?;
    let sink = sink(flags).await?;
    let streams = streams(flags, &sink).await?;
    let tlog = PostgresTlog::with_signer(sink, DirStore::new(dir), signer);
    let mut refused = 0u64;
    for stream in &streams {
        match tlog.checkpoint(stream).await {
            Ok(Some(c)) => println!("{c}"),
            Ok(None) => println!("empty     stream={stream}"),
            Err(e) => match failure(&e) {
                Failure::Check(msg) => {
                    refused += 1;
                    println!("REFUSED   stream={stream}: {msg}");
                }
                Failure::Other(msg) => return Err(Failure::Other(format!("{stream}: {msg}"))),
            },
        }
    }
    println!("checkpointed {} streams: {refused} refused", streams.len());
    if refused > 0 {
        return Err(Failure::Check(format!("{refused} streams refused")));
    }
    Ok(())
}

async fn check(flags: &Flags) -> Result<(), Failure> {
    let verifier = verifier(flags)?;
    let dir = flags.required("--dir")?;
    let sink = sink(flags).await?;
    let streams = streams(flags, &sink).await?;
    let tlog = PostgresTlog::new(sink, DirStore::new(dir), verifier);
    let mut broken = 0u64;
    for stream in &streams {
        match tlog.verify_against_checkpoint(stream).await {
            Ok(Some(cp)) => println!("ok        stream={stream} size={}", cp.size),
            Ok(None) => println!("no checkpoint stream={stream}"),
            Err(e) => match failure(&e) {
                Failure::Check(msg) => {
                    broken += 1;
                    println!("BROKEN    stream={stream}: {msg}");
                }
                Failure::Other(msg) => return Err(Failure::Other(format!("{stream}: {msg}"))),
            },
        }
    }
    println!("checked {} streams: {broken} broken", streams.len());
    if broken > 0 {
        return Err(Failure::Check(format!("{broken} streams broken")));
    }
    Ok(())
}

async fn prove(flags: &Flags) -> Result<(), Failure> {
    let verifier = verifier(flags)?;
    let dir = flags.required("--dir")?;
    let stream = flags.required("--stream")?;
    let size = flags.number("--size")?;
    let tlog = PostgresTlog::new(sink(flags).await?, DirStore::new(dir), verifier);
    let text = match (flags.number("--seq")?, flags.number("--consistency")?) {
        (Some(seq), None) => {
            let (proof, content) = tlog
                .prove_inclusion(stream, seq, size)
                .await
                .map_err(|e| failure(&e))?;
            if let Some(path) = flags.one("--event-out") {
                std::fs::write(path, format!("{content}\n"))
                    .map_err(|e| format!("writing {path}: {e}"))?;
            }
            proof.to_json()
        }
        (None, Some(old)) => tlog
            .prove_consistency(stream, old, size)
            .await
            .map_err(|e| failure(&e))?
            .to_json(),
        _ => return Err(Failure::Other("give one of --seq and --consistency".into())),
    };
    write_out(flags.one("--out"), &text)?;
    Ok(())
}

fn verify_proof(flags: &Flags) -> Result<(), Failure> {
    let verifier = verifier(flags)?;
    if let Some(path) = flags.one("--export") {
        return verify_export(&verifier, path);
    }
    let proof_path = flags.required("--proof")?;
    let text = read(proof_path)?;
    let format = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("format").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| format!("{proof_path} is not a proof document"))?;
    if format.contains("/consistency/") {
        let proof = ConsistencyProof::from_json(&text).map_err(|e| failure(&e))?;
        let (old, new) = proof.verify(&verifier).map_err(|e| failure(&e))?;
        println!(
            "ok consistency stream={} old_size={} new_size={} new_root={}",
            proof.stream,
            old.size,
            new.size,
            hex::encode(new.root)
        );
        return Ok(());
    }
    let proof = InclusionProof::from_json(&text).map_err(|e| failure(&e))?;
    let event_path = flags.required("--event")?;
    let event: Value = serde_json::from_str(&read(event_path)?)
        .map_err(|e| format!("{event_path} is not JSON: {e}"))?;
    let ok = proof.verify(&event, &verifier).map_err(|e| failure(&e))?;
    println!(
        "ok inclusion stream={} seq={} size={} root={}",
        ok.stream,
        ok.seq,
        ok.checkpoint.size,
        hex::encode(ok.checkpoint.root)
    );
    Ok(())
}

fn verify_export(verifier: &NoteVerifier, path: &str) -> Result<(), Failure> {
    let text = read(path)?;
    let (mut ok, mut failed) = (0u64, 0u64);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let result = serde_json::from_str::<Value>(line)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                InclusionProof::verify_export_line(&v, verifier).map_err(|e| error_chain(&e))
            });
        match result {
            Ok(_) => ok += 1,
            Err(msg) => {
                failed += 1;
                println!("FAILED line {}: {msg}", i + 1);
            }
        }
    }
    println!("verified {} lines: {failed} failed", ok + failed);
    if failed > 0 {
        return Err(Failure::Check(format!("{failed} lines failed")));
    }
    Ok(())
}

async fn export(flags: &Flags) -> Result<(), Failure> {
    let verifier = verifier(flags)?;
    let dir = flags.required("--dir")?;
    let since = flags.required("--since")?;
    let since = EventTime::parse_rfc3339(since).map_err(|e| format!("--since {since:?}: {e}"))?;
    let sink = sink(flags).await?;
    let streams = streams(flags, &sink).await?;
    let tlog = PostgresTlog::new(sink, DirStore::new(dir), verifier);
    let mut out: Box<dyn std::io::Write> = match flags.one("--out") {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(Path::new(p)).map_err(|e| format!("creating {p}: {e}"))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let (mut written, mut uncovered) = (0, 0);
    for stream in &streams {
        match tlog.export(stream, since, &mut out).await {
            Ok((w, u)) => {
                written += w;
                uncovered += u;
            }
            // A stream without a checkpoint yet has nothing provable to export.
            Err(TlogError::MalformedProof { detail })
                if detail.starts_with("no stored checkpoint") =>
            {
                eprintln!("audit-verify export: skipping {stream:?}: {detail}");
            }
            Err(e) => return Err(failure(&e)),
        }
    }
    out.flush().map_err(|e| format!("writing: {e}"))?;
    eprintln!(
        "exported {written} events; {uncovered} newer events are not covered by a checkpoint yet"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, String> {
        Flags::parse("prove", args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_subcommand_flags() {
        let f = parse(&["--stream", "a", "--stream=b", "--seq", "3", "--check"]).unwrap();
        assert_eq!(f.all("--stream"), ["a", "b"]);
        assert_eq!(f.number("--seq").unwrap(), Some(3));
        assert_eq!(f.number("--size").unwrap(), None);
        assert!(f.switch("--check"));
        assert!(f.required("--dir").unwrap_err().contains("required"));
        assert!(parse(&["--seq"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--seq", "0"]).unwrap().number("--seq").is_err());
        assert!(
            parse(&["--bogus"])
                .unwrap_err()
                .contains("unknown argument")
        );
        assert_eq!(parse(&["--help"]).err().as_deref(), Some(""));
        assert!(is_subcommand("verify-proof") && !is_subcommand("--stream"));
    }
}
