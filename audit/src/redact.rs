//! Redaction of sensitive fields before an event is stored.

use serde_json::Value;

use crate::error::{AuditError, BatchError};
use crate::event::AuditEvent;
use crate::sink::AuditSink;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Rewrites an event before it is stored, typically to hide sensitive
/// fields of its snapshots and attributes.
///
/// Any `Fn(&mut AuditEvent)` is a redactor; [`PointerRedactor`] covers the
/// common case. Apply one with [`Redacting`] (in front of any sink) or
/// [`Auditor::with_redactor`](crate::Auditor::with_redactor).
///
/// ```
/// use idempotency_audit::{AuditEvent, Redactor};
/// let drop_reason = |e: &mut AuditEvent| e.reason = None;
/// let mut e = AuditEvent::builder("t", "/s").reason("card 4111... declined").build();
/// drop_reason.redact(&mut e);
/// assert!(e.reason.is_none());
/// ```
pub trait Redactor: Send + Sync {
    /// Rewrites `event` in place.
    fn redact(&self, event: &mut AuditEvent);
}

impl<F: Fn(&mut AuditEvent) + Send + Sync> Redactor for F {
    fn redact(&self, event: &mut AuditEvent) {
        self(event);
    }
}

impl<R: Redactor + ?Sized> Redactor for std::sync::Arc<R> {
    fn redact(&self, event: &mut AuditEvent) {
        (**self).redact(event);
    }
}

/// A redaction pointer was malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid redaction pointer {pointer:?}: {reason}")]
pub struct RedactError {
    /// The pointer.
    pub pointer: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Before,
    After,
    Attributes,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pointer {
    root: Root,
    tokens: Vec<String>,
}

/// Replaces the values at JSON pointers (RFC 6901) with `"[REDACTED]"`.
///
/// Pointers are rooted at the event: the first token is `before`, `after`,
/// `attributes`, or `*` for all three. A `*` token further down matches every
/// member of an object or element of an array. Paths that do not exist in
/// an event are skipped. `~1` and `~0` escape `/` and `~` as usual; a literal
/// `*` member cannot be named on its own.
///
/// ```
/// use idempotency_audit::{AuditEvent, PointerRedactor, Redactor};
/// use serde_json::json;
/// let redactor = PointerRedactor::new(["/*/password", "/after/cards/*/number", "/attributes/email"])?;
/// let mut e = AuditEvent::builder("user.updated", "/users")
///     .before(json!({"password": "old", "name": "Ann"}))
///     .after(json!({"password": "new", "cards": [{"number": "4111", "exp": "12/29"}]}))
///     .attribute("email", "ann@example.com")
///     .build();
/// redactor.redact(&mut e);
/// assert_eq!(e.before, Some(json!({"password": "[REDACTED]", "name": "Ann"})));
/// assert_eq!(e.after.unwrap()["cards"][0], json!({"number": "[REDACTED]", "exp": "12/29"}));
/// assert_eq!(e.attributes["email"], "[REDACTED]");
/// # Ok::<_, idempotency_audit::RedactError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerRedactor {
    pointers: Vec<Pointer>,
}

impl PointerRedactor {
    /// Parses the pointers.
    ///
    /// # Errors
    ///
    /// [`RedactError`] when a pointer does not start with `/`, names a root
    /// other than `before`, `after`, `attributes` or `*`, or holds an invalid
    /// `~` escape.
    pub fn new<I, S>(pointers: I) -> Result<Self, RedactError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let pointers = pointers
            .into_iter()
            .map(|p| parse_pointer(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { pointers })
    }
}

fn parse_pointer(text: &str) -> Result<Pointer, RedactError> {
    let err = |reason| RedactError {
        pointer: text.to_owned(),
        reason,
    };
    let rest = text
        .strip_prefix('/')
        .ok_or_else(|| err("must start with '/'"))?;
    let mut tokens = rest
        .split('/')
        .map(|t| unescape(t).ok_or_else(|| err("'~' must be followed by '0' or '1'")));
    let root = match tokens.next().transpose()?.as_deref() {
        Some("before") => Root::Before,
        Some("after") => Root::After,
        Some("attributes") => Root::Attributes,
        Some("*") => Root::Any,
        _ => {
            return Err(err(
                "the first token must be before, after, attributes or *",
            ));
        }
    };
    Ok(Pointer {
        root,
        tokens: tokens.collect::<Result<_, _>>()?,
    })
}

fn unescape(token: &str) -> Option<String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn redact_at(value: &mut Value, tokens: &[String]) {
    let Some((token, rest)) = tokens.split_first() else {
        *value = Value::String(REDACTED.to_owned());
        return;
    };
    match value {
        Value::Object(map) if token == "*" => map.values_mut().for_each(|v| redact_at(v, rest)),
        Value::Object(map) => {
            if let Some(v) = map.get_mut(token) {
                redact_at(v, rest);
            }
        }
        Value::Array(items) if token == "*" => items.iter_mut().for_each(|v| redact_at(v, rest)),
        Value::Array(items) => {
            if let Some(v) = token.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                redact_at(v, rest);
            }
        }
        _ => {}
    }
}

impl Redactor for PointerRedactor {
    fn redact(&self, event: &mut AuditEvent) {
        for p in &self.pointers {
            if matches!(p.root, Root::Before | Root::Any)
                && let Some(v) = event.before.as_mut()
            {
                redact_at(v, &p.tokens);
            }
            if matches!(p.root, Root::After | Root::Any)
                && let Some(v) = event.after.as_mut()
            {
                redact_at(v, &p.tokens);
            }
            if matches!(p.root, Root::Attributes | Root::Any) {
                match p.tokens.split_first() {
                    // `/attributes` alone: every attribute value.
                    None => event
                        .attributes
                        .values_mut()
                        .for_each(|v| redact_at(v, &[])),
                    Some((name, rest)) if name == "*" => event
                        .attributes
                        .values_mut()
                        .for_each(|v| redact_at(v, rest)),
                    Some((name, rest)) => {
                        if let Some(v) = event.attributes.get_mut(name) {
                            redact_at(v, rest);
                        }
                    }
                }
            }
        }
    }
}

/// A sink that redacts every event before handing it to its inner sink.
///
/// ```
/// use idempotency_audit::{AuditEvent, AuditSink, MemorySink, PointerRedactor, Redacting};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let memory = MemorySink::new();
/// let sink = Redacting::new(memory.clone(), PointerRedactor::new(["/attributes/token"]).unwrap());
/// sink.append(&AuditEvent::builder("t", "/s").attribute("token", "s3cr3t").build()).await?;
/// assert_eq!(memory.events()[0].attributes["token"], "[REDACTED]");
/// # Ok::<_, idempotency_audit::AuditError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Redacting<S, R> {
    inner: S,
    redactor: R,
}

impl<S, R> Redacting<S, R> {
    /// Wraps `inner`.
    pub const fn new(inner: S, redactor: R) -> Self {
        Self { inner, redactor }
    }

    /// The inner sink.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AuditSink, R: Redactor> AuditSink for Redacting<S, R> {
    async fn append(&self, event: &AuditEvent) -> Result<(), AuditError> {
        let mut event = event.clone();
        self.redactor.redact(&mut event);
        self.inner.append(&event).await
    }

    async fn append_batch(&self, events: &[AuditEvent]) -> Result<(), BatchError> {
        let events: Vec<AuditEvent> = events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                self.redactor.redact(&mut e);
                e
            })
            .collect();
        self.inner.append_batch(&events).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::MemorySink;

    fn event() -> AuditEvent {
        AuditEvent::builder("t", "/s")
            .before(
                json!({"password": "a", "list": [{"secret": 1}, {"secret": 2}], "a/b": 1, "t~": 2}),
            )
            .after(json!({"password": "b", "nested": {"deep": {"pin": 1234}}}))
            .attribute("email", "x@y")
            .attribute("card", json!({"number": "4111", "brand": "visa"}))
            .build()
    }

    #[test]
    fn pointers_reach_snapshots_attributes_and_wildcards() {
        let r = PointerRedactor::new([
            "/*/password",
            "/before/list/*/secret",
            "/before/a~1b",
            "/before/t~0",
            "/after/nested/deep/pin",
            "/attributes/card/number",
            "/attributes/missing",
            "/after/nested/absent/deeper",
        ])
        .unwrap();
        let mut e = event();
        r.redact(&mut e);
        assert_eq!(
            e.before,
            Some(
                json!({"password": REDACTED, "list": [{"secret": REDACTED}, {"secret": REDACTED}], "a/b": REDACTED, "t~": REDACTED})
            )
        );
        assert_eq!(
            e.after,
            Some(json!({"password": REDACTED, "nested": {"deep": {"pin": REDACTED}}}))
        );
        assert_eq!(
            e.attributes["card"],
            json!({"number": REDACTED, "brand": "visa"})
        );
        assert_eq!(e.attributes["email"], "x@y");
        assert!(!e.attributes.contains_key("missing"));
    }

    #[test]
    fn whole_snapshots_array_indices_and_all_attributes() {
        let r = PointerRedactor::new(["/before", "/attributes", "/after/nested/deep"]).unwrap();
        let mut e = event();
        r.redact(&mut e);
        assert_eq!(e.before, Some(json!(REDACTED)));
        assert_eq!(e.after.as_ref().unwrap()["nested"]["deep"], REDACTED);
        assert!(e.attributes.values().all(|v| v == REDACTED));

        let mut e = event();
        PointerRedactor::new([
            "/before/list/1",
            "/before/list/7",
            "/before/list/x",
            "/attributes/*/brand",
        ])
        .unwrap()
        .redact(&mut e);
        assert_eq!(
            e.before.as_ref().unwrap()["list"],
            json!([{"secret": 1}, REDACTED])
        );
        assert_eq!(e.attributes["card"]["brand"], REDACTED);
        assert_eq!(
            e.attributes["email"], "x@y",
            "a wildcard under a string is skipped"
        );
    }

    #[test]
    fn events_without_snapshots_are_untouched() {
        let r = PointerRedactor::new(["/*/password", "/before"]).unwrap();
        let mut e = AuditEvent::builder("t", "/s").build();
        let before = e.clone();
        r.redact(&mut e);
        assert_eq!(e, before);
    }

    #[test]
    fn malformed_pointers_are_rejected() {
        for bad in ["", "password", "/", "/data/x", "/before/a~2", "/before/~"] {
            let err = PointerRedactor::new([bad]).unwrap_err();
            assert_eq!(err.pointer, bad);
        }
    }

    #[tokio::test]
    async fn redacting_sink_redacts_single_and_batched_appends() {
        let mem = MemorySink::new();
        let redactor: Arc<dyn Redactor> = Arc::new(PointerRedactor::new(["/*/password"]).unwrap());
        let sink = Redacting::new(mem.clone(), redactor);
        let original = event();
        sink.append(&original).await.unwrap();
        sink.append_batch(std::slice::from_ref(&original))
            .await
            .unwrap();
        assert_eq!(
            original.before.as_ref().unwrap()["password"],
            "a",
            "the caller's event is untouched"
        );
        for stored in mem.events() {
            assert_eq!(stored.before.as_ref().unwrap()["password"], REDACTED);
            assert_eq!(stored.after.as_ref().unwrap()["password"], REDACTED);
        }
        assert_eq!(sink.get_ref().len(), 2);
        let shared: Arc<dyn Redactor> =
            Arc::new(|e: &mut AuditEvent| e.subject = Some("hidden".into()));
        let mut e = event();
        shared.redact(&mut e);
        assert_eq!(e.subject.as_deref(), Some("hidden"));
    }
}
