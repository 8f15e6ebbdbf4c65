//! Results: one row per variant × workload, as markdown and JSON.

use std::collections::HashMap;

use crate::client::{Plan, Stats};
use crate::server::Variant;
use crate::{Options, Workload};

/// One measured run.
pub(crate) struct Row {
    variant: &'static str,
    workload: &'static str,
    round: usize,
    pub(crate) protected: bool,
    requests: usize,
    completed: usize,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    /// p99 of the first and of the last quarter of the run's time.
    p99_quarters_ms: (f64, f64),
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
        round: usize,
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
            round,
            protected: variant.protected(),
            requests: plan.requests(),
            completed,
            seconds,
            rps: completed as f64 / seconds.max(1e-9),
            p50_ms: pct(&stats.latencies_us, 0.50),
            p90_ms: pct(&stats.latencies_us, 0.90),
            p99_ms: pct(&stats.latencies_us, 0.99),
            p99_quarters_ms: stats.p99_quarters_ms,
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
}

/// The runs of one variant × workload, one per round.
struct Group<'a> {
    runs: Vec<&'a Row>,
}

impl Group<'_> {
    /// The run of median throughput (the lower one of the middle two).
    fn median(&self) -> &Row {
        let mut by_rps = self.runs.clone();
        by_rps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        by_rps[(by_rps.len() - 1) / 2]
    }

    fn rps_range(&self) -> (f64, f64) {
        self.runs.iter().fold((f64::MAX, 0.0_f64), |(lo, hi), r| {
            (lo.min(r.rps), hi.max(r.rps))
        })
    }

    /// The median over rounds of this variant's req/s divided by `bare`'s
    /// req/s in the same round and workload: a comparison that a change in
    /// the machine's speed between rounds does not move.
    fn vs(&self, bare: &Group<'_>) -> Option<f64> {
        self.ratio(bare).map(|(median, _, _)| median)
    }

    /// This variant's req/s over `other`'s, round by round (same round,
    /// same workload): `(median, lowest, highest)` over the rounds both ran.
    fn ratio(&self, other: &Group<'_>) -> Option<(f64, f64, f64)> {
        let mut ratios: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| {
                let o = other.runs.iter().find(|o| o.round == r.round)?;
                (o.rps > 0.0).then(|| r.rps / o.rps)
            })
            .collect();
        if ratios.is_empty() {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        let mid = ratios.len() / 2;
        let median = if ratios.len() % 2 == 1 {
            ratios[mid]
        } else {
            (ratios[mid - 1] + ratios[mid]) / 2.0
        };
        Some((median, ratios[0], ratios[ratios.len() - 1]))
    }

    /// Exactly once per key in every round.
    fn verdict(&self) -> String {
        let protected = self.runs.iter().any(|r| r.protected);
        let duplicated = self
            .runs
            .iter()
            .filter(|r| r.duplicate_executions > 0)
            .count();
        match (protected, duplicated) {
            (false, 0) => "n/a".into(),
            (false, _) => "n/a (no protection)".into(),
            (true, 0) => "yes".into(),
            (true, n) if self.runs.len() > 1 => {
                format!("**NO** ({n} of {} rounds)", self.runs.len())
            }
            (true, _) => "**NO**".into(),
        }
    }
}

/// The pairs the headline compares: this project against each peer on the
/// same store, against `bare`, and the shared stores against memory.
const HEADLINE_PAIRS: &[(&str, &str)] = &[
    ("memory", "idempotent-memory"),
    ("memory", "axum-idempotent-memory"),
    ("memory", "bare"),
    ("redis", "idempotent-redis"),
    ("postgres", "axum-idempotent-postgres"),
    ("postgres-tx", "axum-idempotent-postgres"),
    ("postgres-tx-async", "axum-idempotent-postgres"),
    ("redis-cached", "idempotent-redis"),
    ("postgres-cached", "axum-idempotent-postgres"),
    ("redis", "memory"),
    ("postgres", "memory"),
    ("redis-cached", "memory"),
    ("postgres-cached", "memory"),
];

/// All rows of a run.
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) skipped: Vec<String>,
    rounds: usize,
    settings: String,
}

impl Report {
    pub(crate) fn new(o: &Options) -> Self {
        Self {
            rows: Vec::new(),
            skipped: Vec::new(),
            rounds: o.rounds,
            settings: format!(
                "connections {}, {} keys × {} copies, {} unique requests, cap {} s per run, {} round{}, {}",
                o.connections,
                o.keys,
                o.copies,
                o.unique,
                o.max_duration.as_secs(),
                o.rounds,
                if o.rounds == 1 { "" } else { "s" },
                if o.isolate {
                    "every server in its own process"
                } else {
                    "this harness's servers in the load generator's process, peers in their own"
                }
            ),
        }
    }

    /// The runs grouped by variant × workload, in the order first run.
    fn groups(&self) -> Vec<Group<'_>> {
        let mut groups: Vec<Group<'_>> = Vec::new();
        for r in &self.rows {
            match groups
                .iter_mut()
                .find(|g| g.runs[0].variant == r.variant && g.runs[0].workload == r.workload)
            {
                Some(g) => g.runs.push(r),
                None => groups.push(Group { runs: vec![r] }),
            }
        }
        groups
    }

    /// The like-for-like ratios: each pair of variants, per workload, as
    /// the median over rounds of the same-round req/s ratio, with its range.
    pub(crate) fn headline(&self) -> String {
        let groups = self.groups();
        let find = |variant: &str, workload: &str| {
            groups
                .iter()
                .find(|g| g.runs[0].variant == variant && g.runs[0].workload == workload)
        };
        let mut workloads: Vec<&str> = Vec::new();
        for g in &groups {
            if !workloads.contains(&g.runs[0].workload) {
                workloads.push(g.runs[0].workload);
            }
        }
        let mut s = String::from("| ratio (same round, median of rounds, range) |");
        for w in &workloads {
            s.push_str(&format!(" {w} |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(workloads.len()));
        s.push('\n');
        let mut any = false;
        for (a, b) in HEADLINE_PAIRS {
            let cells: Vec<String> = workloads
                .iter()
                .map(|w| match (find(a, w), find(b, w)) {
                    (Some(x), Some(y)) => match x.ratio(y) {
                        Some((m, lo, hi)) if x.runs.len() > 1 => {
                            format!("{m:.2}× ({lo:.2}–{hi:.2})")
                        }
                        Some((m, _, _)) => format!("{m:.2}×"),
                        None => "—".to_owned(),
                    },
                    _ => "—".to_owned(),
                })
                .collect();
            if cells.iter().all(|c| c == "—") {
                continue;
            }
            any = true;
            s.push_str(&format!("| `{a}` / `{b}` |"));
            for c in cells {
                s.push_str(&format!(" {c} |"));
            }
            s.push('\n');
        }
        if any { s } else { String::new() }
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = format!("Settings: {}\n\n", self.settings);
        let headline = self.headline();
        if !headline.is_empty() {
            s.push_str(&headline);
            s.push('\n');
        }
        let spread = self.rounds > 1;
        let groups = self.groups();
        let bare_of = |workload: &str| {
            groups.iter().find(|g| {
                g.runs[0].variant == Variant::Bare.name() && g.runs[0].workload == workload
            })
        };
        let with_bare = groups
            .iter()
            .any(|g| g.runs[0].variant == Variant::Bare.name());
        if spread {
            s.push_str("Each row is the round of median req/s; `req/s range` spans all rounds, `once per key` covers all rounds.\n");
        }
        if with_bare {
            s.push_str("`× bare`: req/s divided by `bare`'s in the same round and workload (median over rounds).\n");
        }
        s.push_str("\n| variant | workload | requests | req/s |");
        s.push_str(if spread { " req/s range |" } else { "" });
        s.push_str(if with_bare { " × bare |" } else { "" });
        s.push_str(" p50 ms | p90 ms | p99 ms | p99 first ¼ / last ¼ | non-2xx | executions / keys | once per key |\n|---|---|---:|---:|");
        s.push_str(if spread { "---:|" } else { "" });
        s.push_str(if with_bare { "---:|" } else { "" });
        s.push_str("---:|---:|---:|---:|---|---:|---|\n");
        for g in &groups {
            let r = g.median();
            let mut extra = String::new();
            if spread {
                let (lo, hi) = g.rps_range();
                extra.push_str(&format!(" {lo:.0}–{hi:.0} |"));
            }
            if with_bare {
                match bare_of(r.workload).and_then(|b| g.vs(b)) {
                    Some(x) => extra.push_str(&format!(" {x:.2} |")),
                    None => extra.push_str(" — |"),
                }
            }
            s.push_str(&format!(
                "| {} | {} | {}{} | {:.0} |{} {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {} | {} / {} | {} |\n",
                r.variant,
                r.workload,
                r.completed,
                if r.cut_short {
                    format!(" of {} (time cap)", r.requests)
                } else {
                    String::new()
                },
                r.rps,
                extra,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.p99_quarters_ms.0,
                r.p99_quarters_ms.1,
                r.non_2xx(),
                r.executions,
                r.distinct_keys,
                g.verdict(),
            ));
        }
        for k in &self.skipped {
            s.push_str(&format!("\nskipped: {k}"));
        }
        s
    }

    pub(crate) fn json(&self) -> String {
        let groups = self.groups();
        let medians: Vec<serde_json::Value> = groups
            .iter()
            .map(|g| {
                let (lo, hi) = g.rps_range();
                let bare = groups.iter().find(|b| {
                    b.runs[0].variant == Variant::Bare.name() && b.runs[0].workload == g.runs[0].workload
                });
                serde_json::json!({
                    "variant": g.runs[0].variant,
                    "workload": g.runs[0].workload,
                    "median_round": g.median().round,
                    "requests_per_second": {"median": g.median().rps, "min": lo, "max": hi},
                    "relative_to_bare_same_round": bare.and_then(|b| g.vs(b)),
                    "exactly_once_every_round": g.runs[0].protected.then(|| g.runs.iter().all(|r| r.duplicate_executions == 0)),
                })
            })
            .collect();
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "variant": r.variant,
                    "workload": r.workload,
                    "round": r.round,
                    "requests_planned": r.requests,
                    "requests_completed": r.completed,
                    "seconds": r.seconds,
                    "requests_per_second": r.rps,
                    "latency_ms": {"p50": r.p50_ms, "p90": r.p90_ms, "p99": r.p99_ms,
                        "p99_first_quarter": r.p99_quarters_ms.0, "p99_last_quarter": r.p99_quarters_ms.1},
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
            "rounds": self.rounds,
            "medians": medians,
            "rows": rows,
            "skipped": self.skipped,
        }))
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run(round: usize, completed: usize, executions_of_k1: u32) -> Row {
        let plan = Plan {
            groups: vec![vec!["k1".into(); 10], vec!["k2".into(); 10]],
            burst: false,
            distinct_keys: 2,
        };
        let stats = Stats {
            elapsed: Duration::from_secs(1),
            latencies_us: vec![1000; completed],
            ..Stats::default()
        };
        let effects = HashMap::from([("k1".to_owned(), executions_of_k1), ("k2".to_owned(), 1)]);
        Row::new(
            Variant::Memory,
            Workload::Duplicates,
            round,
            &plan,
            stats,
            effects,
        )
    }

    #[test]
    fn the_median_round_and_every_round_s_verdict() {
        let single = run(1, 20, 1);
        let one = Group {
            runs: vec![&single],
        };
        assert_eq!(one.verdict(), "yes");
        let rows = [run(1, 18, 1), run(2, 12, 1), run(3, 20, 1)];
        let g = Group {
            runs: rows.iter().collect(),
        };
        assert_eq!(g.median().round, 1);
        assert_eq!(g.rps_range(), (12.0, 20.0));
        assert_eq!(g.verdict(), "yes");
        let rows = [run(1, 18, 1), run(2, 12, 2)];
        let g = Group {
            runs: rows.iter().collect(),
        };
        assert_eq!(g.median().round, 2, "the lower of the middle two");
        assert_eq!(g.verdict(), "**NO** (1 of 2 rounds)");
    }

    #[test]
    fn relative_to_bare_pairs_the_same_rounds() {
        let rows = [run(1, 10, 1), run(2, 20, 1), run(3, 16, 1)];
        let bare = [run(1, 20, 1), run(2, 20, 1)];
        let g = Group {
            runs: rows.iter().collect(),
        };
        let b = Group {
            runs: bare.iter().collect(),
        };
        // Rounds 1 and 2 only: 0.5 and 1.0.
        assert_eq!(g.vs(&b), Some(0.75));
        assert_eq!(g.ratio(&b), Some((0.75, 0.5, 1.0)));
        let none = Group { runs: Vec::new() };
        assert_eq!(g.vs(&none), None);
    }

    #[test]
    fn the_headline_compares_pairs_round_by_round() {
        let mut report = Report {
            rows: Vec::new(),
            skipped: Vec::new(),
            rounds: 3,
            settings: String::new(),
        };
        for (round, memory, bare) in [(1, 18, 20), (2, 10, 20), (3, 20, 20)] {
            report.rows.push(run(round, memory, 1));
            let mut b = run(round, bare, 1);
            b.variant = Variant::Bare.name();
            report.rows.push(b);
        }
        let table = report.headline();
        // Same-round ratios 0.9, 0.5, 1.0: median 0.9, range 0.5 to 1.0.
        assert!(
            table.contains("| `memory` / `bare` | 0.90× (0.50–1.00) |"),
            "{table}"
        );
        assert!(
            !table.contains("idempotent-memory"),
            "pairs not run are left out"
        );
    }
}
