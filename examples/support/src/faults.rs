//! Fault injection for the fault suite (`tests/tests/faults.rs`): named
//! points in a handler where the process kills or stops itself, and a
//! journal of side effects that outlives the process.
//!
//! Everything here is off unless its environment variable is set, and the
//! variables are read once, at the first call:
//!
//! | variable | effect |
//! |---|---|
//! | `EXAMPLE_CRASH_AT=<point>` | at the first [`point`] call with that name, the process sends itself SIGKILL: no destructor, no flush, no graceful anything, as `kill -9` from outside |
//! | `EXAMPLE_STOP_AT=<point>` | at the first [`point`] call with that name, the process sends itself SIGSTOP and goes on where it stopped when it gets SIGCONT (a stale owner: frozen past its lease, then thawed) |
//! | `EXAMPLE_EFFECT_LOG=<file>` | [`effect`] appends one line per side effect to the file, with one `write(2)`: the line is in the kernel's page cache before the handler goes on, so a SIGKILL right after it does not lose it |
//!
//! A crash point is hit exactly, not by timing: the handler that reaches it
//! never runs another line of its own. SIGKILL and SIGSTOP are sent with the
//! system's `kill` command, which the calling thread waits for (so the
//! signal is pending for the whole process before the call could return).
//!
//! ```
//! // Inert without EXAMPLE_CRASH_AT / EXAMPLE_STOP_AT / EXAMPLE_EFFECT_LOG.
//! example_support::faults::point("after_claim");
//! example_support::faults::effect("order 1");
//! ```

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The settings, read once.
struct Armed {
    crash_at: Option<String>,
    stop_at: Option<String>,
    effect_log: Option<std::path::PathBuf>,
    stopped: AtomicBool,
}

fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Armed {
            crash_at: var("EXAMPLE_CRASH_AT"),
            stop_at: var("EXAMPLE_STOP_AT"),
            effect_log: var("EXAMPLE_EFFECT_LOG").map(Into::into),
            stopped: AtomicBool::new(false),
        }
    })
}

/// Sends `signal` (`KILL`, `STOP`) to this process and waits for `kill` to
/// have sent it.
fn signal_self(signal: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A named point of a handler. With `EXAMPLE_CRASH_AT` naming it, the
/// process dies here by SIGKILL; with `EXAMPLE_STOP_AT` naming it, the first
/// call stops the process (SIGSTOP) and returns once it is continued.
/// Otherwise it does nothing.
///
/// # Panics
///
/// The crash point is armed but `kill` cannot be run: the handler must not
/// go on as if it had crashed.
pub fn point(name: &str) {
    let armed = armed();
    if armed.crash_at.as_deref() == Some(name) {
        tracing::error!(point = name, "fault injection: SIGKILL");
        assert!(
            signal_self("KILL"),
            "fault injection: could not SIGKILL this process at {name}"
        );
        // The signal is pending: the handler never goes past this point.
        loop {
            std::thread::park();
        }
    }
    if armed.stop_at.as_deref() == Some(name) && !armed.stopped.swap(true, Ordering::SeqCst) {
        tracing::warn!(point = name, "fault injection: SIGSTOP");
        assert!(
            signal_self("STOP"),
            "fault injection: could not SIGSTOP this process at {name}"
        );
        tracing::warn!(point = name, "fault injection: continued");
    }
}

/// Journals one side effect (`what`: one line, without a newline) to
/// `EXAMPLE_EFFECT_LOG`, when it is set. The fault suite counts effects from
/// this file, since a killed process's memory is gone.
///
/// # Panics
///
/// The journal is set but cannot be written: an effect the suite cannot
/// count would hide a duplicate.
pub fn effect(what: &str) {
    let Some(path) = &armed().effect_log else {
        return;
    };
    let line = format!("{what}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "fault injection: cannot write the effect journal {}: {e}",
            path.display()
        );
    }
}
