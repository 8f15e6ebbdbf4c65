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
//! | `EXAMPLE_STOP_AT=<point>` | at the first [`point`] call with that name, the process sends itself SIGSTOP, and the handler goes on from there once the process got SIGCONT (a stale owner: frozen past its lease, then thawed) |
//! | `EXAMPLE_EFFECT_LOG=<file>` | [`effect`] appends one line per side effect to the file, with one `write(2)`: the line is in the kernel's page cache before the handler goes on, so a SIGKILL right after it does not lose it |
//!
//! A crash point is hit exactly, not by timing: the handler that reaches it
//! never runs another line of its own. The process sends the signal to
//! itself with `kill(2)` (through `rustix`, no `unsafe`): a signal a process
//! sends itself is delivered before the system call returns, so SIGKILL
//! ends every thread there and SIGSTOP stops them there.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Inert without EXAMPLE_CRASH_AT / EXAMPLE_STOP_AT / EXAMPLE_EFFECT_LOG.
//! example_support::faults::point("after_claim").await;
//! example_support::faults::effect("order 1");
//! # }
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

/// Sends `signal` to this process.
fn signal_self(signal: rustix::process::Signal) -> bool {
    rustix::process::kill_process(rustix::process::getpid(), signal).is_ok()
}

/// A named point of a handler. With `EXAMPLE_CRASH_AT` naming it, the
/// process dies here by SIGKILL; with `EXAMPLE_STOP_AT` naming it, the first
/// call stops the process (SIGSTOP) and returns only after the process was
/// continued (SIGCONT). Otherwise it does nothing.
///
/// A stop a process sends itself takes effect once every thread has passed
/// through the kernel, so the calling thread could run a few more lines
/// first; the handler therefore waits for the SIGCONT itself before it goes
/// on (a SIGCONT can only come once the stop has held). A SIGKILL ends every
/// thread before the system call returns.
///
/// # Panics
///
/// The point is armed but the signal cannot be sent or awaited: the
/// handler must not go on as if it had crashed or stopped.
pub async fn point(name: &str) {
    let armed = armed();
    if armed.crash_at.as_deref() == Some(name) {
        tracing::error!(point = name, "fault injection: SIGKILL");
        assert!(
            signal_self(rustix::process::Signal::KILL),
            "fault injection: could not SIGKILL this process at {name}"
        );
        // Not reached: the process is gone.
        loop {
            std::thread::park();
        }
    }
    if armed.stop_at.as_deref() == Some(name) && !armed.stopped.swap(true, Ordering::SeqCst) {
        use tokio::signal::unix::{SignalKind, signal};
        let sigcont = SignalKind::from_raw(rustix::process::Signal::CONT.as_raw());
        let mut continued = signal(sigcont).unwrap_or_else(|e| {
            panic!("fault injection: cannot listen for SIGCONT at {name}: {e}")
        });
        tracing::warn!(point = name, "fault injection: SIGSTOP");
        assert!(
            signal_self(rustix::process::Signal::STOP),
            "fault injection: could not SIGSTOP this process at {name}"
        );
        continued.recv().await;
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
