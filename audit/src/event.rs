//! [`AuditEvent`], its builder, [`Actor`] and [`Outcome`].

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::canonical::canonical_json;
use crate::time::EventTime;

/// Version of the event schema written by this crate, stored in every event
/// as `schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest correlation id an event built with [`AuditEvent::builder`]
/// keeps, in bytes: [`AuditEventBuilder::correlation_id`] truncates a longer
/// one, so an unbounded request header can never make an event that a sink
/// refuses. (An `x-request-id` is at most 128 visible ASCII characters.)
pub const MAX_CORRELATION_ID_LEN: usize = 128;

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// One audited fact: who did what to which thing, when, and how it ended.
///
/// The first five fields are the CloudEvents context attributes (`id`,
/// `type`, `source`, `subject`, `time`); [`to_cloudevent`](Self::to_cloudevent)
/// gives the CloudEvents 1.0 structured JSON form. Build one with
/// [`AuditEvent::builder`]:
///
/// ```
/// use idempotency_audit::{Actor, AuditEvent, Outcome};
/// let event = AuditEvent::builder("promotion.attempted", "/promotions")
///     .subject("E-1/3")
///     .actor(Actor::user("u1"))
///     .outcome(Outcome::Created)
///     .build();
/// assert_eq!(event.event_type, "promotion.attempted");
/// assert_eq!(event.id.get_version_num(), 7);
/// ```
///
/// Fields are public so that a [`Redactor`](crate::Redactor) can rewrite
/// them; the struct is `#[non_exhaustive]`, so new fields can be added
/// without breaking callers, who construct events through the builder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// Version of this schema ([`SCHEMA_VERSION`] for events built here).
    pub schema_version: u32,
    /// Unique id, a UUIDv7 (time ordered) by default.
    pub id: Uuid,
    /// What happened, reverse-DNS or dotted: `promotion.attempted`, `idempotency.replayed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Where it happened: a URI reference naming the producer, e.g. `/promotions`.
    pub source: String,
    /// The thing it happened to, within the source, e.g. `E-1/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it happened.
    pub time: EventTime,
    /// Who did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why it ended that way, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request or business correlation id (e.g. `x-request-id`); at
    /// most [`MAX_CORRELATION_ID_LEN`] bytes when set by the builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// W3C trace id of the surrounding trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// W3C span id of the surrounding span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// Hex SHA-256 of the idempotency storage key, when the event is about a
    /// keyed request. Never the raw key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    /// Free attributes.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
    /// The subject's state before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The subject's state after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

impl AuditEvent {
    /// Starts an event of type `event_type` from `source`, with a fresh
    /// UUIDv7 id and the current time.
    pub fn builder(event_type: impl Into<String>, source: impl Into<String>) -> AuditEventBuilder {
        AuditEventBuilder {
            event: Self {
                schema_version: SCHEMA_VERSION,
                id: Uuid::now_v7(),
                event_type: event_type.into(),
                source: source.into(),
                subject: None,
                time: EventTime::now(),
                actor: None,
                outcome: None,
                reason: None,
                correlation_id: None,
                trace_id: None,
                span_id: None,
                key_hash: None,
                attributes: Map::new(),
                before: None,
                after: None,
            },
        }
    }

    /// The event as a JSON value (the shape of its serde form).
    pub fn to_json(&self) -> Value {
        // Every field serialises infallibly: strings, integers, a UUID, an
        // RFC 3339 string, and JSON values with string keys.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The canonical JSON text of the event (see [`canonical_json`]): what
    /// the PostgreSQL sink stores and hashes.
    pub fn canonical_json(&self) -> String {
        canonical_json(&self.to_json())
    }

    /// The CloudEvents 1.0 structured-mode JSON form: the context attributes
    /// at top level, everything else under `data`.
    ///
    /// ```
    /// use idempotency_audit::AuditEvent;
    /// let ce = AuditEvent::builder("promotion.attempted", "/promotions").build().to_cloudevent();
    /// assert_eq!(ce["specversion"], "1.0");
    /// assert_eq!(ce["type"], "promotion.attempted");
    /// assert_eq!(ce["data"]["schema_version"], 1);
    /// ```
    pub fn to_cloudevent(&self) -> Value {
        let mut data = match self.to_json() {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let mut ce = Map::new();
        ce.insert("specversion".into(), Value::from("1.0"));
        for attr in ["id", "type", "source", "subject", "time"] {
            if let Some(v) = data.remove(attr) {
                ce.insert(attr.into(), v);
            }
        }
        ce.insert("datacontenttype".into(), Value::from("application/json"));
        ce.insert("data".into(), Value::Object(data));
        Value::Object(ce)
    }
}

/// Builds an [`AuditEvent`]; see [`AuditEvent::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct AuditEventBuilder {
    event: AuditEvent,
}

impl AuditEventBuilder {
    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = Some(subject.into());
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: Actor) -> Self {
        self.event.actor = Some(actor);
        self
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.event.outcome = Some(outcome);
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.event.reason = Some(reason.into());
        self
    }

    /// Sets the correlation id, truncated to its first
    /// [`MAX_CORRELATION_ID_LEN`] (128) bytes, at a character boundary.
    ///
    /// ```
    /// use idempotency_audit::{AuditEvent, MAX_CORRELATION_ID_LEN};
    /// let e = AuditEvent::builder("t", "/s").correlation_id("r".repeat(1000)).build();
    /// assert_eq!(e.correlation_id.unwrap().len(), MAX_CORRELATION_ID_LEN);
    /// ```
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.event.correlation_id = Some(truncated(id.into(), MAX_CORRELATION_ID_LEN));
        self
    }

    /// Sets the trace id.
    pub fn trace_id(mut self, id: impl Into<String>) -> Self {
        self.event.trace_id = Some(id.into());
        self
    }

    /// Sets the span id.
    pub fn span_id(mut self, id: impl Into<String>) -> Self {
        self.event.span_id = Some(id.into());
        self
    }

    /// Sets the key hash from its hex form.
    pub fn key_hash(mut self, hex: impl Into<String>) -> Self {
        self.event.key_hash = Some(hex.into());
        self
    }

    /// Sets the key hash from the digest bytes (written as lowercase hex).
    pub fn key_hash_bytes(mut self, digest: &[u8]) -> Self {
        self.event.key_hash = Some(crate::hex(digest));
        self
    }

    /// Adds one attribute (replacing an earlier one of the same name).
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.event.attributes.insert(name.into(), value.into());
        self
    }

    /// Adds many attributes.
    pub fn attributes(mut self, attributes: impl IntoIterator<Item = (String, Value)>) -> Self {
        self.event.attributes.extend(attributes);
        self
    }

    /// Sets the state before the change. Redact sensitive fields with a
    /// [`Redactor`](crate::Redactor) before the event is stored.
    pub fn before(mut self, snapshot: impl Into<Value>) -> Self {
        self.event.before = Some(snapshot.into());
        self
    }

    /// Sets the state after the change.
    pub fn after(mut self, snapshot: impl Into<Value>) -> Self {
        self.event.after = Some(snapshot.into());
        self
    }

    /// Overrides the id (e.g. to make a retried emission idempotent).
    pub fn id(mut self, id: Uuid) -> Self {
        self.event.id = id;
        self
    }

    /// Overrides the time.
    pub fn time(mut self, time: EventTime) -> Self {
        self.event.time = time;
        self
    }

    /// Finishes the event.
    pub fn build(self) -> AuditEvent {
        self.event
    }
}

/// What kind of party an [`Actor`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ActorKind {
    /// A person.
    User,
    /// Another service or an API client.
    Service,
    /// The system itself (a scheduler, a reaper, a migration).
    System,
    /// Nobody authenticated.
    Anonymous,
}

/// Who did it: an id, what kind of party, the role it acted in and its tenant.
///
/// ```
/// use idempotency_audit::{Actor, ActorKind};
/// let a = Actor::user("u1").with_role("estimator").with_tenant("acme");
/// assert_eq!(a.kind, ActorKind::User);
/// assert_eq!(a.tenant.as_deref(), Some("acme"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Actor {
    /// The actor's id within its kind (user id, client id, ...).
    pub id: String,
    /// What kind of party.
    pub kind: ActorKind,
    /// The role it acted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Actor {
    /// An actor of any kind.
    pub fn new(kind: ActorKind, id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind,
            role: None,
            tenant: None,
        }
    }

    /// A person.
    pub fn user(id: impl Into<String>) -> Self {
        Self::new(ActorKind::User, id)
    }

    /// A service or API client.
    pub fn service(id: impl Into<String>) -> Self {
        Self::new(ActorKind::Service, id)
    }

    /// The system itself, id `system`.
    pub fn system() -> Self {
        Self::new(ActorKind::System, "system")
    }

    /// Nobody authenticated, id `anonymous`.
    pub fn anonymous() -> Self {
        Self::new(ActorKind::Anonymous, "anonymous")
    }

    /// Sets the role.
    #[must_use]
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.role = Some(role.into());
        self
    }

    /// Sets the tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
}

/// How the audited action ended. Serialised as its snake_case name; any
/// other name round-trips through [`Outcome::Other`].
///
/// ```
/// use idempotency_audit::Outcome;
/// assert_eq!(Outcome::InFlight.as_str(), "in_flight");
/// assert_eq!(Outcome::from("replayed"), Outcome::Replayed);
/// assert_eq!(Outcome::from("escalated"), Outcome::Other("escalated".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Succeeded.
    Success,
    /// Something was created.
    Created,
    /// Something was updated.
    Updated,
    /// Something was deleted.
    Deleted,
    /// Refused for a business reason.
    Rejected,
    /// Refused for lack of permission.
    Denied,
    /// Conflicted with the current state.
    Conflict,
    /// Attempted and failed.
    Failed,
    /// The operation was executed (idempotency decision).
    Executed,
    /// A stored outcome was replayed (idempotency decision).
    Replayed,
    /// A duplicate arrived while the first was still running.
    InFlight,
    /// The same key arrived with a different payload.
    Mismatch,
    /// A crashed or failed attempt was taken over.
    Reclaimed,
    /// A stale worker was fenced off.
    Fenced,
    /// A record was found corrupted.
    Corrupted,
    /// A key was released so a corrected retry can run.
    Released,
    /// Any other outcome, by name.
    Other(Cow<'static, str>),
}

impl Outcome {
    const NAMED: [(&'static str, Self); 16] = [
        ("success", Self::Success),
        ("created", Self::Created),
        ("updated", Self::Updated),
        ("deleted", Self::Deleted),
        ("rejected", Self::Rejected),
        ("denied", Self::Denied),
        ("conflict", Self::Conflict),
        ("failed", Self::Failed),
        ("executed", Self::Executed),
        ("replayed", Self::Replayed),
        ("in_flight", Self::InFlight),
        ("mismatch", Self::Mismatch),
        ("reclaimed", Self::Reclaimed),
        ("fenced", Self::Fenced),
        ("corrupted", Self::Corrupted),
        ("released", Self::Released),
    ];

    /// The outcome's name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(name) => name,
            named => Self::NAMED
                .iter()
                .find(|(_, o)| o == named)
                .map_or("other", |(n, _)| n),
        }
    }
}

impl From<&str> for Outcome {
    fn from(name: &str) -> Self {
        Self::NAMED.iter().find(|(n, _)| *n == name).map_or_else(
            || Self::Other(Cow::Owned(name.to_owned())),
            |(_, o)| o.clone(),
        )
    }
}

impl From<String> for Outcome {
    fn from(name: String) -> Self {
        match Self::from(name.as_str()) {
            Self::Other(_) => Self::Other(Cow::Owned(name)),
            named => named,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> AuditEvent {
        AuditEvent::builder("promotion.attempted", "/promotions")
            .subject("E-1/3")
            .actor(Actor::user("u1").with_role("estimator").with_tenant("acme"))
            .outcome(Outcome::Created)
            .reason("first attempt")
            .correlation_id("req-1")
            .trace_id("4bf92f3577b34da6a3ce929d0e0e4736")
            .span_id("00f067aa0ba902b7")
            .key_hash_bytes(&[0xab; 32])
            .attribute("snapshot_version", 3)
            .attribute("estimate", "E-1")
            .before(json!({"state": "draft"}))
            .after(json!({"state": "promoted"}))
            .time(EventTime::from_unix_micros(1_700_000_000_000_001).unwrap())
            .build()
    }

    #[test]
    fn builder_one_liner_sets_the_common_fields() {
        let e = AuditEvent::builder("promotion.attempted", "/promotions")
            .subject("E-1/3")
            .actor(Actor::user("u1"))
            .outcome(Outcome::Created)
            .build();
        assert_eq!(e.schema_version, SCHEMA_VERSION);
        assert_eq!(e.id.get_version_num(), 7);
        assert_eq!(e.source, "/promotions");
        assert_eq!(e.subject.as_deref(), Some("E-1/3"));
        assert_eq!(e.actor, Some(Actor::user("u1")));
        assert_eq!(e.outcome, Some(Outcome::Created));
        assert!(e.attributes.is_empty() && e.before.is_none() && e.key_hash.is_none());
        let later = AuditEvent::builder("t", "/s").build();
        assert!(later.id > e.id, "UUIDv7 ids are time ordered");
        assert!(later.time >= e.time);
    }

    #[test]
    fn builder_sets_every_field() {
        let e = sample();
        assert_eq!(e.key_hash.as_deref(), Some(&*"ab".repeat(32)));
        assert_eq!(e.attributes["snapshot_version"], 3);
        assert_eq!(e.before, Some(json!({"state": "draft"})));
        assert_eq!(e.after, Some(json!({"state": "promoted"})));
        assert_eq!(e.reason.as_deref(), Some("first attempt"));
        assert_eq!(e.correlation_id.as_deref(), Some("req-1"));
        assert_eq!(e.span_id.as_deref(), Some("00f067aa0ba902b7"));
        let id = Uuid::now_v7();
        let e2 = AuditEvent::builder("t", "/s")
            .id(id)
            .attributes([("a".to_owned(), json!(1)), ("b".to_owned(), json!(2))])
            .key_hash("00ff")
            .build();
        assert_eq!(e2.id, id);
        assert_eq!(e2.attributes.len(), 2);
        assert_eq!(e2.key_hash.as_deref(), Some("00ff"));
    }

    #[test]
    fn serde_round_trip_and_canonical_form() {
        let e = sample();
        let text = e.canonical_json();
        assert!(text.starts_with(
            r#"{"actor":{"id":"u1","kind":"user","role":"estimator","tenant":"acme"},"after":"#
        ));
        assert!(text.contains(r#""time":"2023-11-14T22:13:20.000001Z""#));
        assert!(text.contains(r#""type":"promotion.attempted""#));
        let back: AuditEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.canonical_json(), text);
    }

    #[test]
    fn correlation_ids_are_bounded_at_a_character_boundary() {
        let id = |s: String| {
            AuditEvent::builder("t", "/s")
                .correlation_id(s)
                .build()
                .correlation_id
                .unwrap()
        };
        assert_eq!(id("r".repeat(128)), "r".repeat(128));
        assert_eq!(id("r".repeat(129)), "r".repeat(128));
        assert_eq!(id("r".repeat(100_000)).len(), MAX_CORRELATION_ID_LEN);
        // 'é' is two bytes: 64 of them fit, the 65th would end at byte 130.
        assert_eq!(id("é".repeat(100)), "é".repeat(64));
        assert_eq!(id(format!("{}é", "r".repeat(127))), "r".repeat(127));
        assert_eq!(id("req-1".into()), "req-1");
    }

    #[test]
    fn absent_optionals_are_omitted() {
        let e = AuditEvent::builder("t", "/s")
            .time(EventTime::from_unix_micros(0).unwrap())
            .id(Uuid::nil())
            .build();
        assert_eq!(
            e.canonical_json(),
            r#"{"id":"00000000-0000-0000-0000-000000000000","schema_version":1,"source":"/s","time":"1970-01-01T00:00:00.000000Z","type":"t"}"#
        );
    }

    #[test]
    fn outcomes_round_trip_by_name() {
        for (name, outcome) in Outcome::NAMED {
            assert_eq!(outcome.as_str(), name);
            assert_eq!(Outcome::from(name), outcome);
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), outcome);
        }
        let other = Outcome::from("escalated".to_owned());
        assert_eq!(other, Outcome::Other("escalated".into()));
        assert_eq!(other.to_string(), "escalated");
        assert_eq!(Outcome::from("in_flight".to_owned()), Outcome::InFlight);
    }

    #[test]
    fn actor_constructors() {
        assert_eq!(Actor::system().kind, ActorKind::System);
        assert_eq!(Actor::system().id, "system");
        assert_eq!(Actor::anonymous().kind, ActorKind::Anonymous);
        assert_eq!(Actor::service("billing").kind, ActorKind::Service);
        assert_eq!(
            serde_json::to_value(Actor::service("b")).unwrap(),
            json!({"id": "b", "kind": "service"})
        );
    }

    #[test]
    fn cloudevent_form() {
        let ce = sample().to_cloudevent();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["subject"], "E-1/3");
        assert_eq!(ce["time"], "2023-11-14T22:13:20.000001Z");
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["data"]["outcome"], "created");
        assert!(ce["data"].get("id").is_none());
    }
}
