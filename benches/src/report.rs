//! Results: one row per variant × workload, as markdown and JSON.

use std::collections::HashMap;

use crate::client::{Plan, Stats};
use crate::server::Variant;
use crate::{Options, Workload};

/// One measured run.
pub(crate) struct Row {
    variant: &'static str,
    workload: &'static str,
    pub(crate) protected: bool,
    requests: usize,
    completed: usize,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    statuses: Vec<(u16, u64)>,
    transport_errors: u64,
    distinct_keys: usize,
    executions: u64,
    keys_executed: usize,
    pub(crate) duplicate_executions: u64,
    cut_short: bool,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

impl Row {
    pub(crate) fn new(
        variant: Variant,
        workload: Workload,
        plan: &Plan,
        stats: Stats,
        effects: HashMap<String, u32>,
    ) -> Self {
        let completed = stats.latencies_us.len();
        let seconds = stats.elapsed.as_secs_f64();
        let mut statuses: Vec<(u16, u64)> = stats.statuses.into_iter().collect();
        statuses.sort_unstable();
        Self {
            variant: variant.name(),
            workload: workload.name(),
            protected: variant.protected(),
            requests: plan.requests(),
            completed,
            seconds,
            rps: completed as f64 / seconds.max(1e-9),
            p50_ms: pct(&stats.latencies_us, 0.50),
            p90_ms: pct(&stats.latencies_us, 0.90),
            p99_ms: pct(&stats.latencies_us, 0.99),
            statuses,
            transport_errors: stats.transport_errors,
            distinct_keys: plan.distinct_keys,
            executions: effects.values().map(|&n| u64::from(n)).sum(),
            keys_executed: effects.len(),
            duplicate_executions: effects
                .values()
                .map(|&n| u64::from(n.saturating_sub(1)))
                .sum(),
            cut_short: stats.cut_short,
        }
    }

    fn non_2xx(&self) -> String {
        let parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(s))
            .map(|(s, n)| format!("{s}×{n}"))
            .chain((self.transport_errors > 0).then(|| format!("io×{}", self.transport_errors)))
            .collect();
        if parts.is_empty() {
            "—".into()
        } else {
            parts.join(" ")
        }
    }

    fn verdict(&self) -> &'static str {
        match (self.protected, self.duplicate_executions) {
            (false, 0) => "n/a",
            (false, _) => "n/a (no protection)",
            (true, 0) => "yes",
            (true, _) => "**NO**",
        }
    }
}

/// All rows of a run.
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) skipped: Vec<String>,
    settings: String,
}

impl Report {
    pub(crate) fn new(o: &Options) -> Self {
        Self {
            rows: Vec::new(),
            skipped: Vec::new(),
            settings: format!(
                "connections {}, {} keys × {} copies, {} unique requests, cap {} s per run",
                o.connections,
                o.keys,
                o.copies,
                o.unique,
                o.max_duration.as_secs()
            ),
        }
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = format!("Settings: {}\n\n", self.settings);
        s.push_str("| variant | workload | requests | req/s | p50 ms | p90 ms | p99 ms | non-2xx | executions / keys | once per key |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---|---:|---|\n");
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {}{} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} / {} | {} |\n",
                r.variant,
                r.workload,
                r.completed,
                if r.cut_short {
                    format!(" of {} (time cap)", r.requests)
                } else {
                    String::new()
                },
                r.rps,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.non_2xx(),
                r.executions,
                r.distinct_keys,
                r.verdict(),
            ));
        }
        for k in &self.skipped {
            s.push_str(&format!("\nskipped: {k}"));
        }
        s
    }

    pub(crate) fn json(&self) -> String {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "variant": r.variant,
                    "workload": r.workload,
                    "requests_planned": r.requests,
                    "requests_completed": r.completed,
                    "seconds": r.seconds,
                    "requests_per_second": r.rps,
                    "latency_ms": {"p50": r.p50_ms, "p90": r.p90_ms, "p99": r.p99_ms},
                    "statuses": r.statuses.iter().map(|(s, n)| (s.to_string(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
                    "transport_errors": r.transport_errors,
                    "distinct_keys": r.distinct_keys,
                    "keys_executed": r.keys_executed,
                    "executions": r.executions,
                    "duplicate_executions": r.duplicate_executions,
                    "exactly_once": r.protected.then_some(r.duplicate_executions == 0),
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "settings": self.settings,
            "rows": rows,
            "skipped": self.skipped,
        }))
        .unwrap_or_default()
    }
}
