#![doc = include_str!("../README.md")]

mod backend;
mod cli;
mod commands;
mod confirm;
mod duration;
mod exit;
mod keyarg;
mod render;
mod trail;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use serde_json::json;

use crate::backend::Backend;
use crate::cli::{AuditCommand, Cli, Command};
use crate::commands::Report;
use crate::exit::Failure;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version exit 0, argument errors 2 (clap's codes).
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idempotency-admin: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(report) => {
            print(json, &report);
            ExitCode::from(report.code)
        }
        Err(failure) => {
            eprintln!("{}", failure.message());
            if json {
                let doc = json!({"error": {"code": failure.code(), "message": failure.message()}});
                let _ = writeln!(std::io::stdout().lock(), "{doc}");
            }
            failure.exit_code()
        }
    }
}

fn print(json: bool, report: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(out, "{}", report.json)
    } else {
        write!(out, "{}", report.text)
    };
}

async fn run(cli: Cli) -> Result<Report, Failure> {
    if let Command::Audit {
        command: AuditCommand::Verify { stream },
    } = &cli.command
    {
        return commands::audit_verify(&cli.store, &cli.audit, stream).await;
    }
    if let Command::Audit {
        command: AuditCommand::Checkpoint { key, dir, stream },
    } = &cli.command
    {
        return commands::audit_checkpoint(&cli.store, &cli.audit, key, dir, stream).await;
    }
    let backend = Backend::open(&cli.store)?;
    match &cli.command {
        Command::Inspect { key, body } => commands::inspect(&backend, key, *body).await,
        Command::List {
            state,
            older_than,
            limit,
        } => commands::list(&backend, *state, *older_than, *limit).await,
        Command::Release { key, change, force } => {
            commands::release(&backend, &cli.store, &cli.audit, key, change, *force).await
        }
        Command::Resolve {
            key,
            to,
            retryable,
            change,
        } => {
            commands::resolve(
                &backend, &cli.store, &cli.audit, key, *to, *retryable, change,
            )
            .await
        }
        Command::Purge {
            expired: _,
            dry_run,
            batch,
            change,
        } => commands::purge(&backend, &cli.store, &cli.audit, *dry_run, *batch, change).await,
        Command::Audit { .. } => unreachable!("handled above"),
    }
}
