//! Start-up settings: read from the arguments and the environment, checked
//! before anything is bound or connected. Every failure is one line that
//! names the setting and says what it accepts; [`refuse`] prints it and
//! gives exit status 2.
//!
//! The readers take the environment as a closure (`|name| std::env::var(name).ok()`
//! in a binary, a table in a unit test), so a service's whole settings
//! table is testable without touching the process environment.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tracing_subscriber::EnvFilter;

/// What to do when `DATABASE_URL` is missing or unreachable.
pub const START_POSTGRES: &str = "start PostgreSQL (e.g. `scripts/services.sh` or \
`pg_ctlcluster 15 main start`) and set DATABASE_URL=postgres://postgres@127.0.0.1:5432/test";

/// Prints `error: {e}` on stderr and returns exit status 2: how a service
/// refuses a bad setting.
pub fn refuse(e: impl Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

/// The values of the flags `names` (`--name VALUE` or `--name=VALUE`, the
/// last one wins), in the order of `names`.
///
/// # Errors
///
/// An argument that is not one of `names`, or a flag without its value.
pub fn flags<const N: usize>(
    args: &[String],
    names: [&str; N],
) -> Result<[Option<String>; N], String> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let Some(slot) = names.iter().position(|n| *n == name) else {
            return Err(format!("unknown argument {arg:?} (see --help)"));
        };
        values[slot] = Some(match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| format!("{name} needs a value (see --help)"))?
                .clone(),
        });
    }
    Ok(values)
}

/// The listen address: the `--bind` value when given, else `BIND_ADDR`
/// (`env`), else `default`.
///
/// # Errors
///
/// The chosen value is not a socket address; the line names where it
/// came from (`--bind` or `BIND_ADDR`).
pub fn listen_addr(
    flag: Option<String>,
    env: Option<String>,
    default: &str,
) -> Result<SocketAddr, String> {
    let name = if flag.is_some() {
        "--bind"
    } else {
        "BIND_ADDR"
    };
    let raw = flag.or(env).unwrap_or_else(|| default.to_owned());
    raw.parse()
        .map_err(|_| format!("{name}={raw:?} is not a socket address such as {default}"))
}

/// The listen address of a service whose only flag is `--bind ADDR`:
/// [`flags`] then [`listen_addr`].
///
/// # Errors
///
/// As [`flags`] and [`listen_addr`].
pub fn bind_addr(
    args: &[String],
    env: Option<String>,
    default: &str,
) -> Result<SocketAddr, String> {
    let [bind] = flags(args, ["--bind"])?;
    listen_addr(bind, env, default)
}

/// `name` as whole milliseconds within `range`; `default` when unset.
///
/// # Errors
///
/// Not a whole number within `range`.
pub fn millis(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: Duration,
    range: RangeInclusive<u64>,
) -> Result<Duration, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if range.contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "{name}={v:?} is not a whole number of milliseconds from {} to {}",
                range.start(),
                range.end()
            )),
        },
    }
}

/// `name` as whole seconds within `range`; `None` when unset.
///
/// # Errors
///
/// Not a whole number within `range`.
pub fn secs(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    range: RangeInclusive<u64>,
) -> Result<Option<Duration>, String> {
    let Some(v) = var(name) else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(s) if range.contains(&s) => Ok(Some(Duration::from_secs(s))),
        _ => Err(format!(
            "{name}={v:?} is not a whole number of seconds from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

/// `name` as a whole number within `range`; `default` when unset.
///
/// # Errors
///
/// Not a whole number within `range`.
pub fn number<T>(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, String>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    match var(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(format!(
                "{name}={v:?} is not a whole number from {} to {}",
                range.start(),
                range.end()
            )),
        },
    }
}

/// `name` as a switch: `true`/`on`/`1` or `false`/`off`/`0` (any case);
/// `default` when unset or empty.
///
/// # Errors
///
/// Any other value.
pub fn switch(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: bool,
) -> Result<bool, String> {
    match var(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => Ok(default),
        Some("true" | "on" | "1") => Ok(true),
        Some("false" | "off" | "0") => Ok(false),
        Some(_) => Err(format!(
            "{name}={:?} is not true or false",
            var(name).unwrap_or_default()
        )),
    }
}

/// `name` as one of `choices` (exact spelling); `None` when unset or empty.
///
/// # Errors
///
/// Any other value; the line lists the choices (`a, b or c`).
pub fn choice<T: Clone>(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    choices: &[(&str, T)],
) -> Result<Option<T>, String> {
    match var(name).as_deref() {
        None | Some("") => Ok(None),
        Some(v) => match choices.iter().find(|(spelling, _)| *spelling == v) {
            Some((_, value)) => Ok(Some(value.clone())),
            None => Err(format!("{name}={v:?} is not {}", one_of(choices))),
        },
    }
}

/// `a`, `a or b`, `a, b or c`.
fn one_of<T>(choices: &[(&str, T)]) -> String {
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    match names.split_last() {
        None => "anything accepted".to_owned(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Whether `name` is accepted as a PostgreSQL schema name: 1 to 48 of
/// `[a-z0-9_]`, not starting with a digit, not `pg_...`. Such a name
/// needs no quoting rules beyond `"name"` and can go into SQL text.
pub fn is_schema_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
        && !name.starts_with("pg_")
}

/// `name` as a schema name ([`is_schema_name`]); `default` when unset or empty.
///
/// # Errors
///
/// Not a schema name.
pub fn schema(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: &str,
) -> Result<String, String> {
    match var(name).filter(|v| !v.is_empty()) {
        None => Ok(default.to_owned()),
        Some(v) if is_schema_name(&v) => Ok(v),
        Some(v) => Err(format!(
            "{name}={v:?} is not a schema name: 1 to 48 of a-z, 0-9 and _, not starting with a digit or pg_"
        )),
    }
}

/// The log filter from `RUST_LOG` (`value`); `info` when unset.
///
/// # Errors
///
/// Not a `tracing` filter.
pub fn log_filter(value: Option<String>) -> Result<EnvFilter, String> {
    match value {
        None => Ok(EnvFilter::new("info")),
        Some(v) => EnvFilter::try_new(&v)
            .map_err(|e| format!("RUST_LOG={v:?} is not a log filter such as info or warn ({e})")),
    }
}

/// Installs the log subscriber (to stderr) with `filter`.
pub fn init_logging(filter: EnvFilter) {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The connection options of `DATABASE_URL` (`url`, unset when `None` or empty).
///
/// # Errors
///
/// Unset, not a `postgres://` / `postgresql://` URL, or not parseable.
pub fn postgres_url(url: Option<String>) -> Result<PgConnectOptions, String> {
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Err(format!("DATABASE_URL is not set; {START_POSTGRES}"));
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("DATABASE_URL is not a postgres:// or postgresql:// URL".to_owned());
    }
    url.parse()
        .map_err(|e| format!("DATABASE_URL is not a PostgreSQL URL ({e})"))
}

/// A pool of at most `max_connections` on `options`: a connection waits at
/// most 5 s for the pool, a statement runs at most 5 s.
///
/// # Errors
///
/// The database cannot be reached; the message says how to start it.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.options([("statement_timeout", "5000")]))
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at DATABASE_URL ({e}); {START_POSTGRES}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn bind_address_precedence() {
        let d = "127.0.0.1:3000";
        assert_eq!(bind_addr(&[], None, d).unwrap().to_string(), d);
        assert_eq!(
            bind_addr(&[], Some("0.0.0.0:8080".into()), d)
                .unwrap()
                .port(),
            8080
        );
        let a = args(&["--bind", "127.0.0.1:4000"]);
        assert_eq!(
            bind_addr(&a, Some("0.0.0.0:8080".into()), d)
                .unwrap()
                .port(),
            4000
        );
        let a = args(&["--bind=127.0.0.1:4001"]);
        assert_eq!(bind_addr(&a, None, d).unwrap().port(), 4001);
        assert!(
            bind_addr(&args(&["--bind"]), None, d)
                .unwrap_err()
                .contains("--bind needs")
        );
        assert!(
            bind_addr(&args(&["--port", "1"]), None, d)
                .unwrap_err()
                .contains("unknown")
        );
        let err = bind_addr(&[], Some("localhost:99999".into()), d).unwrap_err();
        assert!(err.starts_with("BIND_ADDR="), "{err}");
        let err = bind_addr(&args(&["--bind", "nope"]), None, d).unwrap_err();
        assert!(err.starts_with("--bind="), "{err}");
    }

    #[test]
    fn several_flags() {
        let [bind, run] = flags(&args(&["--run=a,b", "--bind", "x"]), ["--bind", "--run"]).unwrap();
        assert_eq!(bind.as_deref(), Some("x"));
        assert_eq!(run.as_deref(), Some("a,b"));
        let [bind, run] = flags(&[], ["--bind", "--run"]).unwrap();
        assert!(bind.is_none() && run.is_none());
    }

    #[test]
    fn durations_and_numbers() {
        let e = env(&[
            ("A_MS", "1500"),
            ("B_MS", "0"),
            ("C_MS", "soon"),
            ("S", "60"),
            ("N", "7"),
        ]);
        let d = Duration::from_secs(1);
        assert_eq!(
            millis(&e, "A_MS", d, 1..=2000).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(millis(&e, "UNSET", d, 1..=2000).unwrap(), d);
        let err = millis(&e, "B_MS", d, 1..=2000).unwrap_err();
        assert_eq!(
            err,
            "B_MS=\"0\" is not a whole number of milliseconds from 1 to 2000"
        );
        assert!(
            millis(&e, "C_MS", d, 1..=2000)
                .unwrap_err()
                .contains("C_MS")
        );
        assert_eq!(
            secs(&e, "S", 1..=60).unwrap(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(secs(&e, "UNSET", 1..=60).unwrap(), None);
        assert!(secs(&e, "S", 1..=59).unwrap_err().contains("from 1 to 59"));
        assert_eq!(number(&e, "N", 5u32, 1..=10).unwrap(), 7);
        assert_eq!(number(&e, "UNSET", 5u32, 1..=10).unwrap(), 5);
        assert_eq!(
            number(&e, "N", 5u32, 8..=10).unwrap_err(),
            "N=\"7\" is not a whole number from 8 to 10"
        );
        assert!(number(&e, "C_MS", 5i64, 0..=10).is_err());
    }

    #[test]
    fn switches_and_choices() {
        let e = env(&[("ON", "On"), ("OFF", "0"), ("BAD", "maybe"), ("EMPTY", "")]);
        assert!(switch(&e, "ON", false).unwrap());
        assert!(!switch(&e, "OFF", true).unwrap());
        assert!(switch(&e, "EMPTY", true).unwrap());
        assert_eq!(
            switch(&e, "BAD", true).unwrap_err(),
            "BAD=\"maybe\" is not true or false"
        );
        let e = env(&[("F", "stage"), ("G", "explode")]);
        let c = [("insert", 1), ("stage", 2)];
        assert_eq!(choice(&e, "F", &c).unwrap(), Some(2));
        assert_eq!(choice(&e, "UNSET", &c).unwrap(), None);
        assert_eq!(
            choice(&e, "G", &c).unwrap_err(),
            "G=\"explode\" is not insert or stage"
        );
        let c3 = [("a", 1), ("b", 2), ("c", 3)];
        assert!(
            choice(&e, "G", &c3)
                .unwrap_err()
                .ends_with("is not a, b or c")
        );
    }

    #[test]
    fn schema_names() {
        for ok in ["job_creation", "_x", "jobs_t_1"] {
            assert!(is_schema_name(ok), "{ok}");
        }
        for bad in ["", "1a", "pg_x", "Jobs", "a-b", "a\"b", &"a".repeat(49)] {
            assert!(!is_schema_name(bad), "{bad}");
        }
        let e = env(&[("S", "Bad-Name"), ("T", "fine")]);
        assert_eq!(schema(&e, "T", "d").unwrap(), "fine");
        assert_eq!(schema(&e, "UNSET", "d").unwrap(), "d");
        assert!(
            schema(&e, "S", "d")
                .unwrap_err()
                .starts_with("S=\"Bad-Name\" is not a schema name")
        );
    }

    #[test]
    fn log_filters_and_urls() {
        assert!(log_filter(None).is_ok());
        assert!(log_filter(Some("warn,sqlx=error".into())).is_ok());
        let err = log_filter(Some("[=".into())).unwrap_err();
        assert!(
            err.starts_with("RUST_LOG=") && err.lines().count() == 1,
            "{err}"
        );
        assert!(
            postgres_url(None)
                .unwrap_err()
                .contains("DATABASE_URL is not set")
        );
        assert!(
            postgres_url(Some(String::new()))
                .unwrap_err()
                .contains("not set")
        );
        assert!(
            postgres_url(Some("mysql://x".into()))
                .unwrap_err()
                .contains("postgres://")
        );
        assert!(postgres_url(Some("postgres://u@127.0.0.1:5432/db".into())).is_ok());
    }

    #[test]
    fn refusal_is_exit_status_2() {
        assert_eq!(refuse("x"), ExitCode::from(2));
    }
}
