//! What each command does.

use std::fmt::Write as _;
use std::time::Duration;

use idempotency_audit::Outcome as AuditOutcome;
use idempotency_core::{
    AdminRecord, Failure as StoredFailure, ListFilter, RecordState, Resolution, StateKind,
};
use serde_json::{Value, json};

use crate::backend::Backend;
use crate::cli::{AuditArgs, ChangeArgs, KeyArgs, StateArg, StoreArgs, Target};
use crate::confirm::confirm;
use crate::duration::human;
use crate::exit::{Failure, chain};
use crate::keyarg;
use crate::render::{self, record_json, record_text};
use crate::trail::{self, Change, Trail};

/// What a command prints, and its exit code (0, or 1 / 5 for a result that
/// is still worth printing: an empty listing, a broken chain).
pub(crate) struct Report {
    pub(crate) json: Value,
    pub(crate) text: String,
    pub(crate) code: u8,
}

impl Report {
    fn done(json: Value, text: String) -> Self {
        Self {
            json,
            text,
            code: 0,
        }
    }
}

/// The record a key names, or exit 1.
async fn find(backend: &Backend, args: &KeyArgs) -> Result<AdminRecord, Failure> {
    let key = keyarg::storage_key(args)?;
    backend
        .inspect(&key)
        .await
        .map_err(|e| Failure::store("reading the record", &e))?
        .ok_or_else(|| Failure::NothingMatched(format!("no record for key {key}")))
}

pub(crate) async fn inspect(
    backend: &Backend,
    key: &KeyArgs,
    body: bool,
) -> Result<Report, Failure> {
    let record = find(backend, key).await?;
    Ok(Report::done(
        record_json(&record, body),
        record_text(&record, body),
    ))
}

pub(crate) async fn list(
    backend: &Backend,
    state: Option<StateArg>,
    older_than: Option<Duration>,
    limit: u32,
) -> Result<Report, Failure> {
    let mut filter = ListFilter::new(limit as usize);
    if let Some(state) = state {
        filter = filter.state(match state {
            StateArg::Pending => StateKind::Pending,
            StateArg::Completed => StateKind::Completed,
            StateArg::Failed => StateKind::Failed,
            StateArg::Corrupted => StateKind::Corrupted,
        });
    }
    if let Some(age) = older_than {
        filter = filter.older_than(age);
    }
    let listing = backend
        .list(&filter)
        .await
        .map_err(|e| Failure::store("listing records", &e))?;
    let json = json!({
        "location": backend.location(),
        "matched": listing.matched,
        "shown": listing.records.len(),
        "records": listing.records.iter().map(|r| record_json(r, false)).collect::<Vec<_>>(),
    });
    let text = render::list_text(&listing.records, listing.matched);
    Ok(Report {
        code: u8::from(listing.records.is_empty()),
        json,
        text,
    })
}

/// The attributes every change event carries.
fn change_attributes(backend: &Backend, record: &AdminRecord) -> Vec<(String, Value)> {
    vec![
        ("location".into(), backend.location()),
        ("fence".into(), json!(record.record.fence)),
        ("attempts".into(), json!(record.record.attempts)),
        ("state".into(), json!(record.record.state.name())),
    ]
}

/// Whether the record the atomic step changed is not the one inspected
/// (claimed, taken over or changed in between).
fn changed_meanwhile(inspected: &AdminRecord, before: &idempotency_core::Record) -> bool {
    before.fence != inspected.record.fence || before.state.kind() != inspected.record.state.kind()
}

pub(crate) async fn release(
    backend: &Backend,
    store: &StoreArgs,
    audit: &AuditArgs,
    key: &KeyArgs,
    change: &ChangeArgs,
    force: bool,
) -> Result<Report, Failure> {
    let change = Change::from_args(change)?;
    let current = find(backend, key).await?;
    let hex = current.record.key.to_hex();
    if current.expired {
        return Err(Failure::NothingMatched(format!(
            "the record for key {hex} expired: it counts as absent already \
             (purge --expired deletes it)"
        )));
    }
    match &current.record.state {
        RecordState::Pending(_) => {}
        RecordState::Corrupted(_) => {
            return Err(Failure::Refused(format!(
                "the record for key {hex} is CORRUPTED: use `resolve --to failed|absent`"
            )));
        }
        other => {
            return Err(Failure::Refused(format!(
                "only a PENDING record can be released; the record for key {hex} is {}",
                other.name()
            )));
        }
    }
    let live = current.lease_live();
    if live && !force {
        return Err(Failure::Refused(format!(
            "the lease of key {hex} is live for {} more: its owner may be executing it now. \
             Wait until it runs out, or pass --force (the owner is fenced off, but an effect \
             it makes outside the store may happen twice)",
            human(current.lease_left().unwrap_or_default())
        )));
    }
    let trail = Trail::open(audit, store.connect_timeout).await?;
    let question = format!(
        "Release {} record {hex} (fence {}, attempt {}, {}) in {}{}?",
        current.record.state.name(),
        current.record.fence,
        current.record.attempts,
        render::note(&current),
        backend.kind(),
        if live {
            " — its lease is LIVE: the owner is fenced off, an effect outside the store may run twice"
        } else {
            ""
        }
    );
    confirm(&question, change.yes)?;
    let before = backend
        .resolve(&current.record.key, Resolution::Delete)
        .await
        .map_err(|e| Failure::store("releasing the record", &e))?;
    let meanwhile = changed_meanwhile(&current, &before);
    let before = AdminRecord::new(before, current.now);
    let event = trail::event("release", &change, AuditOutcome::Released, &hex, Some(&hex))
        .attributes(change_attributes(backend, &before))
        .attribute("forced", force)
        .attribute("lease_live", live)
        .attribute(
            "lease_left_ms",
            current.lease_left().unwrap_or_default().as_millis() as u64,
        )
        .attribute("changed_meanwhile", meanwhile)
        .before(record_json(&before, false))
        .after(json!({"state": "ABSENT"}))
        .build();
    let written = trail.record(&event).await?;
    let mut text = format!(
        "released {hex}: {} (fence {}, attempt {}) -> absent; the next claim executes with a \
         greater fence\n",
        before.record.state.name(),
        before.record.fence,
        before.record.attempts
    );
    if meanwhile {
        let _ = writeln!(
            text,
            "note: the record changed between the read and the release (fence {} -> {}): \
             the record released is the later one",
            current.record.fence, before.record.fence
        );
    }
    let _ = writeln!(text, "audit event {}", event.id);
    Ok(Report::done(
        json!({
            "action": "release",
            "key": hex,
            "forced": force,
            "lease_live": live,
            "changed_meanwhile": meanwhile,
            "inspected_fence": current.record.fence,
            "before": record_json(&before, false),
            "after": {"state": "ABSENT"},
            "audit_event": {"id": event.id.to_string(), "written": written},
        }),
        text,
    ))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn resolve(
    backend: &Backend,
    store: &StoreArgs,
    audit: &AuditArgs,
    key: &KeyArgs,
    to: Target,
    retryable: bool,
    change: &ChangeArgs,
) -> Result<Report, Failure> {
    if retryable && to == Target::Absent {
        return Err(Failure::Usage("--retryable goes with --to failed".into()));
    }
    let change = Change::from_args(change)?;
    let current = find(backend, key).await?;
    let hex = current.record.key.to_hex();
    match &current.record.state {
        RecordState::Corrupted(_) => {}
        RecordState::Pending(_) => {
            return Err(Failure::Refused(format!(
                "the record for key {hex} is PENDING: use `release` (it checks the lease)"
            )));
        }
        other => {
            return Err(Failure::Refused(format!(
                "only a CORRUPTED record is resolved; the record for key {hex} is {}",
                other.name()
            )));
        }
    }
    let trail = Trail::open(audit, store.connect_timeout).await?;
    let (resolution, after, target) = match to {
        Target::Absent => (Resolution::Delete, json!({"state": "ABSENT"}), "absent"),
        Target::Failed => {
            let reason = format!("resolved by an operator: {}", change.reason);
            let failure = if retryable {
                StoredFailure::retryable(reason.clone())
            } else {
                StoredFailure::terminal(reason.clone())
            };
            (
                Resolution::Fail(failure),
                json!({"state": "FAILED", "reason": reason, "retryable": retryable}),
                if retryable {
                    "FAILED (retryable)"
                } else {
                    "FAILED (terminal)"
                },
            )
        }
    };
    confirm(
        &format!(
            "Resolve CORRUPTED record {hex} (fence {}) in {} to {target}?",
            current.record.fence,
            backend.kind()
        ),
        change.yes,
    )?;
    let before = backend
        .resolve(&current.record.key, resolution)
        .await
        .map_err(|e| Failure::store("resolving the record", &e))?;
    let meanwhile = changed_meanwhile(&current, &before);
    let before = AdminRecord::new(before, current.now);
    let outcome = match to {
        Target::Absent => AuditOutcome::Deleted,
        Target::Failed => AuditOutcome::Updated,
    };
    let event = trail::event("resolve", &change, outcome, &hex, Some(&hex))
        .attributes(change_attributes(backend, &before))
        .attribute("to", target)
        .attribute("changed_meanwhile", meanwhile)
        .before(record_json(&before, false))
        .after(after.clone())
        .build();
    let written = trail.record(&event).await?;
    let text = format!(
        "resolved {hex}: CORRUPTED (fence {}) -> {target}\naudit event {}\n",
        before.record.fence, event.id
    );
    Ok(Report::done(
        json!({
            "action": "resolve",
            "key": hex,
            "changed_meanwhile": meanwhile,
            "inspected_fence": current.record.fence,
            "before": record_json(&before, false),
            "after": after,
            "audit_event": {"id": event.id.to_string(), "written": written},
        }),
        text,
    ))
}

pub(crate) async fn purge(
    backend: &Backend,
    store: &StoreArgs,
    audit: &AuditArgs,
    dry_run: bool,
    batch: u32,
    change: &ChangeArgs,
) -> Result<Report, Failure> {
    let change = if dry_run {
        None
    } else {
        Some(Change::from_args(change)?)
    };
    let expired = backend
        .count_expired()
        .await
        .map_err(|e| Failure::store("counting expired records", &e))?;
    let location = backend.location();
    if expired == 0 {
        return Err(Failure::NothingMatched(format!(
            "no expired records in {}",
            backend.name()
        )));
    }
    let Some(change) = change else {
        return Ok(Report::done(
            json!({"action": "purge", "dry_run": true, "location": location, "expired": expired}),
            format!("{expired} expired records would be deleted (dry run: nothing deleted)\n"),
        ));
    };
    let trail = Trail::open(audit, store.connect_timeout).await?;
    confirm(
        &format!("Delete {expired} expired records from {}?", backend.name()),
        change.yes,
    )?;
    let batch_size = batch as usize;
    let mut deleted = 0_u64;
    let mut batches = 0_u64;
    // Records that expire during the run are purged too; the bound keeps a
    // store that expires records as fast as they are deleted from holding
    // the command forever.
    let max_batches = expired / u64::from(batch) + 2;
    let mut failure = None;
    while batches < max_batches {
        match backend.purge_expired(batch_size).await {
            Ok(n) => {
                batches += 1;
                deleted += n;
                if n < u64::from(batch) {
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if deleted == 0
        && let Some(e) = &failure
    {
        return Err(Failure::store("purging expired records", e));
    }
    let event = trail::event(
        "purge",
        &change,
        AuditOutcome::Deleted,
        &backend.name(),
        None,
    )
    .attribute("location", location.clone())
    .attribute("expired_counted", expired)
    .attribute("deleted", deleted)
    .attribute("batch", batch)
    .attribute("batches", batches)
    .attribute("interrupted", failure.as_ref().map(|e| chain(e)))
    .build();
    let written = trail.record(&event).await?;
    let report = json!({
        "action": "purge",
        "dry_run": false,
        "location": location,
        "expired": expired,
        "deleted": deleted,
        "batches": batches,
        "audit_event": {"id": event.id.to_string(), "written": written},
    });
    if let Some(e) = failure {
        return Err(Failure::store(
            &format!("purging expired records (deleted {deleted} before the failure)"),
            &e,
        ));
    }
    if deleted == 0 {
        return Err(Failure::NothingMatched(
            "nothing deleted: the expired records were claimed again, or another reaper of \
             the store is running now"
                .into(),
        ));
    }
    Ok(Report::done(
        report,
        format!(
            "deleted {deleted} expired records in {batches} batches\naudit event {}\n",
            event.id
        ),
    ))
}

/// `audit checkpoint`: a signed checkpoint per stream, written to `dir`.
pub(crate) async fn audit_checkpoint(
    store: &StoreArgs,
    audit: &AuditArgs,
    key: &std::path::Path,
    dir: &std::path::Path,
    streams: &[String],
) -> Result<Report, Failure> {
    use idempotency_audit::postgres::PostgresTlog;
    use idempotency_audit::tlog::{DirStore, NoteSigner, TlogError};

    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(key)
            .map_err(|e| Failure::Usage(format!("reading {}: {e}", key.display())))?,
    );
    let signer = NoteSigner::from_text(&text)
        .map_err(|e| Failure::Usage(format!("{}: {e}", key.display())))?;
    let url = audit
        .audit_database_url
        .as_deref()
        .or(store.database_url.as_deref())
        .ok_or_else(|| {
            Failure::Usage(
                "audit checkpoint needs --audit-database-url (or --database-url, DATABASE_URL)"
                    .into(),
            )
        })?;
    let sink = trail::audit_sink(
        trail::audit_pool(url, store.connect_timeout)?,
        &audit.audit_schema,
    )?;
    let mut names = streams.to_vec();
    if names.is_empty() {
        let mut after: Option<String> = None;
        while let Some(s) = sink
            .next_stream(after.as_deref())
            .await
            .map_err(|e| Failure::Unreachable(format!("audit trail: {}", chain(&e))))?
        {
            names.push(s.clone());
            after = Some(s);
        }
    }
    let tlog = PostgresTlog::with_signer(sink, DirStore::new(dir), signer);
    let (mut text, mut rows, mut refused) = (String::new(), Vec::new(), 0usize);
    for stream in &names {
        match tlog.checkpoint(stream).await {
            Ok(Some(c)) => {
                let _ = writeln!(text, "{c}");
                rows.push(json!({
                    "stream": c.stream,
                    "size": c.checkpoint.size,
                    "root": c.checkpoint.root.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    "signed": c.signed,
                }));
            }
            Ok(None) => {
                let _ = writeln!(text, "empty     stream={stream}");
                rows.push(json!({"stream": stream, "size": 0}));
            }
            Err(
                e @ (TlogError::Proof(_)
                | TlogError::Inconsistent { .. }
                | TlogError::Broken { .. }
                | TlogError::UnverifiedNote { .. }),
            ) => {
                refused += 1;
                let _ = writeln!(text, "REFUSED   stream={stream}: {}", chain(&e));
                rows.push(json!({"stream": stream, "refused": chain(&e)}));
            }
            Err(TlogError::Audit(idempotency_audit::AuditError::InvalidStream { .. })) => {
                return Err(Failure::Usage(format!(
                    "{stream:?} is not a valid stream name"
                )));
            }
            Err(e) => return Err(Failure::Unreachable(format!("{stream}: {}", chain(&e)))),
        }
    }
    let _ = writeln!(
        text,
        "checkpointed {} streams into {}: {refused} refused",
        names.len(),
        dir.display()
    );
    let code = if refused > 0 {
        5
    } else if names.is_empty() {
        1
    } else {
        0
    };
    Ok(Report {
        json: json!({"streams": rows, "dir": dir.display().to_string(), "refused": refused}),
        text,
        code,
    })
}

pub(crate) async fn audit_verify(
    store: &StoreArgs,
    audit: &AuditArgs,
    streams: &[String],
) -> Result<Report, Failure> {
    let url = audit
        .audit_database_url
        .as_deref()
        .or(store.database_url.as_deref())
        .ok_or_else(|| {
            Failure::Usage(
                "audit verify needs --audit-database-url (or --database-url, DATABASE_URL)".into(),
            )
        })?;
    let sink = trail::audit_sink(
        trail::audit_pool(url, store.connect_timeout)?,
        &audit.audit_schema,
    )?;
    let unreachable = |e: idempotency_audit::AuditError| {
        Failure::Unreachable(format!("audit trail: {}", chain(&e)))
    };
    let reports = if streams.is_empty() {
        sink.verify_all().await.map_err(unreachable)?
    } else {
        let mut out = Vec::with_capacity(streams.len());
        for s in streams {
            match sink.verify(s).await {
                Ok(r) => out.push(r),
                Err(idempotency_audit::AuditError::InvalidStream { .. }) => {
                    return Err(Failure::Usage(format!("{s:?} is not a valid stream name")));
                }
                Err(e) => return Err(unreachable(e)),
            }
        }
        out
    };
    let events: u64 = reports.iter().map(|r| r.events).sum();
    let broken = reports.iter().filter(|r| !r.is_intact()).count();
    let mut text = String::new();
    for r in &reports {
        let _ = writeln!(text, "{r}");
    }
    let _ = writeln!(
        text,
        "verified {} streams, {events} events: {}",
        reports.len(),
        if broken == 0 {
            "all intact".to_owned()
        } else {
            format!("{broken} broken")
        }
    );
    let json = json!({
        "streams": reports.iter().map(|r| json!({
            "stream": r.stream,
            "events": r.events,
            "last_seq": r.last_seq,
            "head": r.last_hash.map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            "intact": r.is_intact(),
            "break_count": r.break_count,
            "breaks": r.breaks.iter().map(|b| json!({"seq": b.seq, "through": b.through, "kind": b.kind.to_string()})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "events": events,
        "intact": broken == 0,
    });
    let code = if broken > 0 {
        5
    } else if events == 0 {
        1
    } else {
        0
    };
    Ok(Report { json, text, code })
}
