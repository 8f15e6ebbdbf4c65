//! Reading before claiming: when a store's read-only "peek" pays.
//!
//! A claim is a write (a Lua script, an `INSERT ... ON CONFLICT`), but most
//! duplicates find a record that the claim would leave untouched: completed
//! (a replay), in flight, failed for good, refused for another fingerprint,
//! corrupted. A store can answer those from one plain read (an `HMGET`, an
//! indexed `SELECT`) and claim only when the read says it must. The read is
//! a round trip more for a key seen for the first time, so it pays only
//! where duplicates are common.
//!
//! [`PeekGate`] decides per store: [`ReadFirst::Always`], [`ReadFirst::Never`],
//! or [`ReadFirst::Adaptive`] (the default of the stores of this
//! project), which peeks while the share of recent claims that a peek
//! would have answered is at least one half. Every claim teaches it,
//! peeked or not: a peek by whether it answered, an unpeeked claim by its
//! own answer ([`PeekGate::would_answer`]: a replay yes, an in-flight
//! answer no, since in a burst of simultaneous duplicates every read runs
//! before the first claim creates the record). The choice never changes an answer, only its cost: the
//! claim that follows a peek decides from the record as it is then.
//!
//! ```
//! use idempotency_core::peek::{PeekGate, ReadFirst};
//!
//! let gate = PeekGate::new(ReadFirst::Adaptive);
//! // First executions: a peek would not have answered them.
//! for _ in 0..32 {
//!     gate.observe(false);
//! }
//! assert!(!gate.should_peek());
//! // Replays: it would have.
//! for _ in 0..32 {
//!     gate.observe(true);
//! }
//! assert!(gate.should_peek());
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use crate::Claim;

/// Whether a store reads a record before it claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadFirst {
    /// Peek while at least half of the recent claims were answered without
    /// a write (an exponentially weighted share over about the last 16).
    #[default]
    Adaptive,
    /// Peek before every claim.
    Always,
    /// Never peek: every claim is the store's claim operation.
    Never,
}

/// The share, in 1/65536ths, at which [`ReadFirst::Adaptive`] peeks.
const ONE: u32 = 1 << 16;
const THRESHOLD: u32 = ONE / 2;
/// The weight of the newest observation: 1/16.
const SHIFT: u32 = 4;

/// The per-store decision of [`ReadFirst`]. Lock-free: one relaxed load per
/// decision and per observation (concurrent observations may overwrite one
/// another, which only makes the share a little less exact).
#[derive(Debug)]
pub struct PeekGate {
    mode: ReadFirst,
    /// Exponentially weighted share of claims a peek would have answered.
    share: AtomicU32,
}

impl PeekGate {
    /// A gate in `mode`. An adaptive gate starts at the threshold, so the
    /// first claim peeks.
    pub const fn new(mode: ReadFirst) -> Self {
        Self {
            mode,
            share: AtomicU32::new(THRESHOLD),
        }
    }

    /// The mode it was built with.
    pub fn mode(&self) -> ReadFirst {
        self.mode
    }

    /// Whether the next claim should peek first.
    pub fn should_peek(&self) -> bool {
        match self.mode {
            ReadFirst::Always => true,
            ReadFirst::Never => false,
            ReadFirst::Adaptive => self.share.load(Ordering::Relaxed) >= THRESHOLD,
        }
    }

    /// Records whether a claim was (or, unpeeked, would have been) answered
    /// without a write.
    pub fn observe(&self, answered_without_write: bool) {
        if self.mode != ReadFirst::Adaptive {
            return;
        }
        let share = self.share.load(Ordering::Relaxed);
        let target = if answered_without_write { ONE } else { 0 };
        let next = share - (share >> SHIFT) + (target >> SHIFT);
        self.share.store(next, Ordering::Relaxed);
    }

    /// What an unpeeked claim teaches: whether a read just before it would
    /// have answered it. A replay, a mismatch, a terminal failure or a
    /// corrupted record, yes: those records were there before the claim and
    /// stay. An in-flight answer, no: it comes mostly from a burst of
    /// duplicates that arrive together, whose reads would all have run
    /// before the first claim created the record, and found nothing.
    pub fn would_answer(claim: &Claim) -> bool {
        !matches!(claim, Claim::Acquired { .. } | Claim::InFlight { .. })
    }

    /// The current share of claims answered without a write, 0.0 to 1.0.
    pub fn share(&self) -> f64 {
        f64::from(self.share.load(Ordering::Relaxed)) / f64::from(ONE)
    }
}

impl Default for PeekGate {
    fn default() -> Self {
        Self::new(ReadFirst::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_modes_ignore_what_they_see() {
        let always = PeekGate::new(ReadFirst::Always);
        let never = PeekGate::new(ReadFirst::Never);
        for _ in 0..100 {
            always.observe(false);
            never.observe(true);
        }
        assert!(always.should_peek());
        assert!(!never.should_peek());
    }

    #[test]
    fn adaptive_follows_the_recent_share() {
        let gate = PeekGate::new(ReadFirst::Adaptive);
        assert!(gate.should_peek(), "starts by peeking");
        gate.observe(false);
        assert!(!gate.should_peek(), "one first execution turns it off");
        gate.observe(true);
        assert!(gate.should_peek(), "one replay back on");
        for _ in 0..200 {
            gate.observe(false);
        }
        assert!(gate.share() < 0.01);
        // About a dozen replays in a row bring it back.
        let mut n = 0;
        while !gate.should_peek() {
            gate.observe(true);
            n += 1;
        }
        assert!((8..=16).contains(&n), "{n}");
        for _ in 0..200 {
            gate.observe(true);
        }
        assert!(gate.share() > 0.99 && gate.share() <= 1.0);
    }

    #[test]
    fn an_unpeeked_claim_teaches_by_its_answer() {
        use std::time::Duration;
        let in_flight = Claim::InFlight {
            retry_after: Duration::from_secs(1),
            attempt: 1,
        };
        assert!(!PeekGate::would_answer(&in_flight));
        assert!(PeekGate::would_answer(&Claim::Mismatch));
        assert!(PeekGate::would_answer(&Claim::Corrupted {
            detail: String::new()
        }));
    }

    #[test]
    fn a_mixed_stream_peeks_when_replays_dominate() {
        // 3 replays for every first execution: peeks most of the time.
        let gate = PeekGate::new(ReadFirst::Adaptive);
        let mut peeked = 0;
        for i in 0..400 {
            peeked += usize::from(gate.should_peek());
            gate.observe(i % 4 != 0);
        }
        assert!(peeked > 300, "{peeked}");
        // 1 replay for every 3 first executions: mostly does not.
        let gate = PeekGate::new(ReadFirst::Adaptive);
        let mut peeked = 0;
        for i in 0..400 {
            peeked += usize::from(gate.should_peek());
            gate.observe(i % 4 == 0);
        }
        assert!(peeked < 100, "{peeked}");
    }
}
