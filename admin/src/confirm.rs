//! Confirmation of a change: asked on a terminal, refused without one.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use crate::exit::Failure;

/// Asks `question` on the terminal and waits for `y` / `yes`. With `yes`
/// (`--yes`) nothing is asked. When stdin is not a terminal (a script, a
/// pipe) and `--yes` was not given, the change is refused: a script must say
/// `--yes` to change anything.
pub(crate) fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::Refused(
            "not confirmed: stdin is not a terminal; pass --yes to confirm".into(),
        ));
    }
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "{question} [y/N] ");
    let _ = stderr.flush();
    drop(stderr);
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::Refused(format!("not confirmed: {e}")))?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Failure::Refused("not confirmed".into())),
    }
}
