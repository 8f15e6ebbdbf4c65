//! [`RedisStore`]: the store itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idempotency_core::peek::{PeekGate, ReadFirst};
use idempotency_core::{
    Claim, ClaimKind, ClaimRequest, ClockControl, Completed, Corrupted, Failed, Fingerprint,
    IdempotencyStore, Lease, LeaseToken, Observed, Record, RecordState, Resolution, StateKind,
    StorageKey, StoreError, Timestamp,
};
use idempotency_core::{Completion, Failure};
use redis::{RedisResult, RedisWrite, ToRedisArgs, Value};

// Milliseconds passed to a script saturate at a hundred years, so every
// sum of them stays exact in Lua's doubles.
use idempotency_core::clamp_millis as ms;
use idempotency_core::wait;

use crate::codec::{self, array, bytes, int, tag, text, uint};
use crate::config::RedisConfig;
use crate::conn::Backend;
use crate::error::{ConfigError, ProtocolError, map_redis};
use crate::notify::Subscriber;
use crate::scripts::{self, Eval};

/// Metric: latency of the store's scripts in seconds, by `operation` (the
/// store's own view; `idempotency_store_operation_seconds` is the caller's
/// view, written once by the layer's timing decorator).
const SCRIPT_SECONDS: &str = "idempotency_redis_script_seconds";

/// Metric: scripts that failed (connection, timeout, protocol), by `operation`.
const SCRIPT_ERRORS_TOTAL: &str = "idempotency_redis_script_errors_total";

/// Poll interval while the change subscription is not connected.
const FALLBACK_POLL: Duration = Duration::from_millis(25);
/// How often a read retries when the record changes under a corruption mark.
const MAX_RETRIES: usize = 3;

/// A Redis-backed [`IdempotencyStore`].
///
/// Every decision is one Lua script (`EVALSHA`, or `EVAL` with the script's
/// text when the server answers `NOSCRIPT`) on one record's keys
/// (`<prefix>:{<64-hex storage key>}` and its fence floor), using the Redis
/// server's clock.
/// Cloning is cheap and shares connections, clock offset and waiters.
/// See the [crate documentation](crate) for the key layout, cancellation
/// safety, timeouts and the guarantees (and their limits).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    config: RedisConfig,
    channel: String,
    offset_ms: AtomicU64,
    subscriber: Subscriber,
    /// Whether a claim reads the record first (never in cluster mode).
    peek: PeekGate,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.config.prefix)
            .field("mode", &self.inner.config.mode)
            .finish_non_exhaustive()
    }
}

/// `<prefix>:{<64-hex storage key>}<suffix>` as one command argument.
pub(crate) struct RecordKey<'a> {
    prefix: &'a str,
    key: &'a StorageKey,
    suffix: &'static str,
}

/// The fence floor's suffix: `<prefix>:{<64-hex storage key>}:fence`.
const FLOOR_SUFFIX: &str = ":fence";

impl ToRedisArgs for RecordKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut arg = out.writer_for_next_arg();
        let mut tagged = [0u8; 2 + 64 + 1];
        tagged[..2].copy_from_slice(b":{");
        for (i, b) in self.key.as_bytes().iter().enumerate() {
            tagged[2 + 2 * i] = HEX[usize::from(b >> 4)];
            tagged[3 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        tagged[66] = b'}';
        // Writing into the command buffer cannot fail.
        let _ = std::io::Write::write_all(&mut arg, self.prefix.as_bytes());
        let _ = std::io::Write::write_all(&mut arg, &tagged);
        let _ = std::io::Write::write_all(&mut arg, self.suffix.as_bytes());
    }
}

/// What a conditional corruption mark did.
enum Mark {
    Marked,
    Gone,
    Changed,
}

impl RedisStore {
    /// Builds a store. No I/O happens here: connections are made on first
    /// use (and remade after failures), so an application can start while
    /// Redis is still down. Use [`RedisStore::ping`] as a readiness check.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an unparsable URL, a prefix with braces, or a pool
    /// that cannot be built.
    pub fn new(config: RedisConfig) -> Result<Self, ConfigError> {
        if config.prefix.is_empty() || config.prefix.contains(['{', '}']) {
            return Err(ConfigError::InvalidPrefix(config.prefix));
        }
        let backend = Backend::new(&config)?;
        let channel = format!("{}:changes", config.prefix);
        let pubsub_client = config
            .urls
            .iter()
            .find(|u| !u.is_empty())
            .and_then(|u| redis::Client::open(u.as_str()).ok());
        let subscriber = Subscriber::new(
            pubsub_client,
            channel.clone(),
            config.connect_timeout,
            config.response_timeout,
        );
        let read_first = if backend.is_cluster() {
            ReadFirst::Never
        } else {
            config.read_first
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                config,
                channel,
                offset_ms: AtomicU64::new(0),
                subscriber,
                peek: PeekGate::new(read_first),
            }),
        })
    }

    /// The configuration this store was built with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The Redis key of a record: `<prefix>:{<64-hex storage key>}`. The
    /// braces make the hex digest the key's Redis Cluster hash tag.
    pub fn record_key(&self, key: &StorageKey) -> String {
        format!("{}:{{{}}}", self.inner.config.prefix, key.to_hex())
    }

    /// The Redis key of a record's fence floor:
    /// `<prefix>:{<64-hex storage key>}:fence`, in the record's hash slot.
    /// It holds the record's fence and outlives the record by an hour, so a
    /// claim after a release, an expiry or an operator's deletion still
    /// draws a greater fence (see the crate documentation, "Guarantees").
    pub fn fence_key(&self, key: &StorageKey) -> String {
        format!("{}{FLOOR_SUFFIX}", self.record_key(key))
    }

    /// [`RedisStore::record_key`] as a command argument, written into the
    /// command buffer without an intermediate string.
    pub(crate) fn key_arg<'a>(&'a self, key: &'a StorageKey) -> RecordKey<'a> {
        RecordKey {
            prefix: &self.inner.config.prefix,
            key,
            suffix: "",
        }
    }

    /// [`RedisStore::fence_key`] as a command argument.
    fn floor_arg<'a>(&'a self, key: &'a StorageKey) -> RecordKey<'a> {
        RecordKey {
            prefix: &self.inner.config.prefix,
            key,
            suffix: FLOOR_SUFFIX,
        }
    }

    /// A script run on a record and its fence floor.
    pub(crate) fn eval_with_floor(&self, script: &'static scripts::Lua, key: &StorageKey) -> Eval {
        Eval::with_floor(script, self.key_arg(key), self.floor_arg(key))
    }

    /// The pub/sub channel on which record changes are announced.
    pub fn change_channel(&self) -> &str {
        &self.inner.channel
    }

    /// Whether this store's change subscription (used by
    /// [`wait_for_change`](IdempotencyStore::wait_for_change)) is connected
    /// right now. It starts with the first wait; until it is live, waiting
    /// falls back to polling.
    pub fn change_subscription_live(&self) -> bool {
        self.inner.subscriber.hub.is_subscribed()
    }

    /// How many times the change subscription has been established: 1 once
    /// the first wait started it, one more after each reconnect (a lost
    /// connection, a restarted or failed-over server). A number that keeps
    /// growing means an unstable connection to Redis.
    pub fn change_subscriptions(&self) -> u64 {
        self.inner.subscriber.hub.established()
    }

    /// Pool statistics in [`ConnectionMode::Pooled`](crate::ConnectionMode::Pooled) mode.
    pub fn pool_status(&self) -> Option<deadpool_redis::Status> {
        self.inner.backend.pool_status()
    }

    /// Checks that Redis answers (a readiness probe).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] or [`StoreError::Timeout`] when it does not.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped ping leaves no state behind.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.backend.checkout().await?;
        let result = redis::cmd("PING").query_async::<Value>(&mut conn).await;
        conn.finish(&result);
        result.map(drop).map_err(map_redis)
    }

    /// Loads every script into the script cache (optional: scripts are
    /// sent with `EVAL`, which caches them, on their first `NOSCRIPT` anyway).
    ///
    /// # Errors
    ///
    /// The store errors of [`RedisStore::ping`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: loading is idempotent.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in scripts::all() {
            let mut conn = self.inner.backend.checkout().await?;
            let result = script.load(&mut conn).await;
            conn.finish(&result);
            result.map_err(map_redis)?;
        }
        Ok(())
    }

    /// The connections.
    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub(crate) fn offset(&self) -> u64 {
        self.inner.offset_ms.load(Ordering::Relaxed)
    }

    pub(crate) async fn eval(&self, op: &'static str, inv: &Eval) -> Result<Value, StoreError> {
        let started = Instant::now();
        let result = async {
            let mut conn = self.inner.backend.checkout().await?;
            let result = inv.invoke(&mut conn).await;
            conn.finish(&result);
            result.map_err(map_redis)
        }
        .await;
        metrics::histogram!(SCRIPT_SECONDS, "operation" => op)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            metrics::counter!(SCRIPT_ERRORS_TOTAL, "operation" => op).increment(1);
            tracing::warn!(store = "redis", op, error = %e, "redis store operation failed");
        }
        result
    }

    /// Marks `key` corrupted if it still is the record that was read
    /// (same fence and state).
    async fn mark_if(
        &self,
        key: &StorageKey,
        detail: &str,
        fence: Option<u64>,
        state: Option<&[u8]>,
    ) -> Result<Mark, StoreError> {
        tracing::error!(
            store = "redis",
            key = %key.short(),
            detail,
            "undecodable idempotency record: marking it corrupted"
        );
        let mut inv = Eval::new(&scripts::MARK_CORRUPTED, self.key_arg(key));
        inv.arg(self.offset())
            .arg(detail)
            .arg(fence.map(|f| f.to_string()).unwrap_or_default())
            .arg(state.unwrap_or_default())
            .arg(&self.inner.channel)
            .arg(key.as_bytes().as_slice());
        match int(&self.eval("mark_corrupted", &inv).await?) {
            Some(1) => Ok(Mark::Marked),
            Some(0) => Ok(Mark::Gone),
            Some(2) => Ok(Mark::Changed),
            _ => Err(protocol("mark_corrupted reply")),
        }
    }

    /// Time left on a live pending lease, read from the store; `watch`
    /// marks the record so that the transition ending it is announced.
    async fn pending_lease_left(
        &self,
        key: &StorageKey,
        watch: bool,
    ) -> Result<Option<Duration>, StoreError> {
        let (now, fields) = self.read_watching(key, watch).await?;
        let Some(fields) = fields else {
            return Ok(None);
        };
        if codec::state_of(&fields) != Some(b"P".as_slice()) {
            return Ok(None);
        }
        let deadline = fields
            .get(7)
            .and_then(int)
            .and_then(|d| u64::try_from(d).ok());
        Ok(deadline
            .filter(|d| *d > now)
            .map(|d| Duration::from_millis(d - now)))
    }

    /// Runs the `get` script: the store's "now" and the live record's fields.
    async fn read(&self, key: &StorageKey) -> Result<(u64, Option<Vec<Value>>), StoreError> {
        self.read_watching(key, false).await
    }

    /// [`RedisStore::read`]; `watch` also marks a live pending record
    /// watched (`v`), so its completion, failure or release publishes.
    async fn read_watching(
        &self,
        key: &StorageKey,
        watch: bool,
    ) -> Result<(u64, Option<Vec<Value>>), StoreError> {
        let mut inv = Eval::new(&scripts::GET, self.key_arg(key));
        inv.arg(self.offset())
            .arg(&self.inner.channel)
            .arg(key.as_bytes().as_slice())
            .arg(if watch { "1" } else { "0" });
        let reply = self.eval("get", &inv).await?;
        let items = array(&reply)?;
        let [now, fields] = items else {
            return Err(protocol("get reply"));
        };
        let now = uint(now)?;
        match fields {
            Value::Nil => Ok((now, None)),
            Value::Array(fields) => Ok((now, Some(fields.clone()))),
            _ => Err(protocol("get reply")),
        }
    }

    async fn lease_op(
        &self,
        op: &'static str,
        script: &'static scripts::Lua,
        lease: &Lease,
        extra: impl FnOnce(&mut Eval),
    ) -> Result<Value, StoreError> {
        let mut inv = self.eval_with_floor(script, &lease.key);
        inv.arg(self.offset())
            .arg(lease.token.as_uuid().as_bytes().as_slice())
            .arg(lease.fence);
        extra(&mut inv);
        self.eval(op, &inv).await
    }

    /// The `claim` script (plus, only when a completed record's outcome
    /// cannot be decoded, a conditional `mark_corrupted`).
    async fn claim_script(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        for _ in 0..MAX_RETRIES {
            let token = LeaseToken::new();
            let mut inv = self.eval_with_floor(&scripts::CLAIM, &req.key);
            inv.arg(self.offset())
                .arg(req.fingerprint.as_bytes().as_slice())
                .arg(ms(req.lease))
                .arg(ms(req.retention))
                .arg(req.max_attempts.max(1))
                .arg(token.as_uuid().as_bytes().as_slice())
                .arg(&self.inner.channel)
                .arg(req.key.as_bytes().as_slice());
            let reply = self.eval("claim", &inv).await?;
            match Self::claim_reply(req, token, &reply)? {
                Ok(claim) => return Ok(claim),
                Err((detail, fence)) => {
                    match Box::pin(self.mark_if(&req.key, &detail, fence, Some(b"C"))).await? {
                        Mark::Marked => return Ok(Claim::Corrupted { detail }),
                        Mark::Gone | Mark::Changed => continue,
                    }
                }
            }
        }
        Err(protocol(
            "record kept changing while being marked corrupted",
        ))
    }

    /// What a claim would answer without writing, from one pipelined read
    /// (`TIME`, `HMGET`; no Lua): a live completed record (replay), a live
    /// lease (in flight), a terminal failure, a corrupted record, or any of
    /// them for another fingerprint (mismatch). `None` when the claim must
    /// decide: no record, an expired one, an expired lease, a retryable
    /// failure, or a record this read cannot decode (the script marks it).
    /// The checks are `claim.lua`'s, in its order, on the same fields.
    async fn peek(&self, req: &ClaimRequest) -> Result<Option<Claim>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("TIME")
            .cmd("HMGET")
            .arg(self.key_arg(&req.key))
            .arg(&codec::FIELD_NAMES[..]);
        let started = Instant::now();
        let result = async {
            let mut conn = self.inner.backend.checkout().await?;
            let result = pipe
                .query_async::<(RedisResult<Vec<u64>>, RedisResult<Value>)>(&mut conn)
                .await;
            conn.finish(&result);
            match result.map_err(map_redis)? {
                (Ok(time), Ok(fields)) => Ok(Some((time, fields))),
                // A key that is not a hash: the script decides (and marks it).
                (Ok(_), Err(e)) if e.code() == Some("WRONGTYPE") => Ok(None),
                (Err(e), _) | (_, Err(e)) => Err(map_redis(e)),
            }
        }
        .await;
        metrics::histogram!(SCRIPT_SECONDS, "operation" => "peek")
            .record(started.elapsed().as_secs_f64());
        let (time, fields) = match result {
            Ok(Some(reply)) => reply,
            Ok(None) => return Ok(None),
            Err(e) => {
                metrics::counter!(SCRIPT_ERRORS_TOTAL, "operation" => "peek").increment(1);
                tracing::warn!(store = "redis", op = "peek", error = %e, "redis store operation failed");
                return Err(e);
            }
        };
        let [secs, micros] = time[..] else {
            return Err(protocol("TIME reply"));
        };
        let now = secs
            .saturating_mul(1000)
            .saturating_add(micros / 1000)
            .saturating_add(self.offset());
        let fields = array(&fields)?;
        if fields.iter().all(|f| *f == Value::Nil) {
            return Ok(None);
        }
        let Ok(record) = codec::record(req.key, fields) else {
            return Ok(None);
        };
        let now = Timestamp::from_millis(now);
        if record.is_expired(now) {
            return Ok(None);
        }
        Ok(Some(match record.state {
            RecordState::Corrupted(c) => Claim::Corrupted { detail: c.detail },
            _ if record.fingerprint != req.fingerprint => Claim::Mismatch,
            RecordState::Pending(p) if p.lease_deadline > now => Claim::InFlight {
                retry_after: p.lease_deadline.saturating_since(now),
                attempt: record.attempts,
            },
            RecordState::Completed(c) => Claim::Completed(c),
            RecordState::Failed(f)
                if !(f.retryable && record.attempts < req.max_attempts.max(1)) =>
            {
                Claim::Failed(f)
            }
            _ => return Ok(None),
        }))
    }

    fn lease_ack(reply: &Value, what: &'static str) -> Result<(), StoreError> {
        match int(reply) {
            Some(1) => Ok(()),
            Some(0) => Err(StoreError::LeaseLost),
            _ => Err(protocol(what)),
        }
    }

    fn claim_reply(
        req: &ClaimRequest,
        token: LeaseToken,
        reply: &Value,
    ) -> Result<Result<Claim, (String, Option<u64>)>, StoreError> {
        let items = array(reply)?;
        let at = |i: usize| items.get(i).ok_or(protocol("claim reply"));
        let claim = match tag(items)? {
            b"A" => {
                let kind = match bytes(at(1)?) {
                    Some(b"N") => ClaimKind::New,
                    Some(b"T") => ClaimKind::Takeover,
                    Some(b"R") => ClaimKind::Retry,
                    _ => return Err(protocol("claim kind")),
                };
                let lease = Lease {
                    key: req.key,
                    token,
                    fence: uint(at(2)?)?,
                    attempt: attempt(at(3)?)?,
                    deadline: Timestamp::from_millis(uint(at(4)?)?),
                    lease_duration: req.lease,
                    retention: req.retention,
                };
                Claim::Acquired { lease, kind }
            }
            b"I" => Claim::InFlight {
                retry_after: Duration::from_millis(uint(at(1)?)?),
                attempt: attempt(at(2)?)?,
            },
            b"C" => {
                let fence = uint(at(4)?).ok();
                let outcome = codec::decode_outcome(bytes(at(1)?).unwrap_or_default());
                let resource = codec::decode_resource(at(2)?);
                match (outcome, resource) {
                    (Ok(outcome), Ok(resource)) => Claim::Completed(Completed {
                        outcome,
                        resource,
                        completed_at: Timestamp::from_millis(uint(at(3)?)?),
                        fence: fence.ok_or(protocol("claim reply fence"))?,
                    }),
                    (Err(detail), _) | (_, Err(detail)) => return Ok(Err((detail, fence))),
                }
            }
            b"F" => Claim::Failed(Failed {
                reason: text(at(1)?),
                retryable: int(at(2)?) == Some(1),
                failed_at: Timestamp::from_millis(uint(at(3)?)?),
            }),
            b"M" => Claim::Mismatch,
            b"X" => Claim::Corrupted {
                detail: text(at(1)?),
            },
            _ => return Err(protocol("claim reply tag")),
        };
        Ok(Ok(claim))
    }
}

fn attempt(v: &Value) -> Result<u32, StoreError> {
    u32::try_from(uint(v)?).map_err(|_| protocol("attempt number"))
}

pub(crate) fn protocol(what: &'static str) -> StoreError {
    StoreError::backend(ProtocolError(what))
}

impl From<ProtocolError> for StoreError {
    fn from(e: ProtocolError) -> Self {
        StoreError::backend(e)
    }
}

/// A record that cannot be decoded, shown as what it is.
pub(crate) fn corrupted_record(
    key: StorageKey,
    fields: &[Value],
    detail: String,
    now: u64,
) -> Record {
    Record {
        key,
        fingerprint: Fingerprint::from_bytes(
            fields
                .get(1)
                .and_then(bytes)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .unwrap_or([0; 32]),
        ),
        fence: codec::fence_of(fields).unwrap_or(0),
        attempts: 0,
        created_at: Timestamp::from_millis(0),
        expires_at: Timestamp::MAX,
        state: RecordState::Corrupted(Corrupted {
            detail,
            detected_at: Timestamp::from_millis(now),
        }),
    }
}

impl IdempotencyStore for RedisStore {
    /// A pipelined read (see [`RedisConfig::read_first`]), then, unless it
    /// answered, one `claim` script run (plus, only when a completed
    /// record's outcome cannot be decoded, a conditional `mark_corrupted`).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future never corrupts a connection. If the script already
    /// ran, the lease it granted is orphaned and expires after `req.lease`,
    /// after which a claim takes it over.
    async fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        let gate = &self.inner.peek;
        if gate.should_peek() {
            let answer = self.peek(req).await?;
            gate.observe(answer.is_some());
            if let Some(claim) = answer {
                return Ok(claim);
            }
        } else {
            let claim = self.claim_script(req).await?;
            gate.observe(PeekGate::would_answer(&claim));
            return Ok(claim);
        }
        self.claim_script(req).await
    }

    async fn complete(&self, lease: &Lease, completion: Completion) -> Result<(), StoreError> {
        let outcome = completion.outcome.encode();
        let resource = completion.resource;
        let reply = self
            .lease_op("complete", &scripts::COMPLETE, lease, |inv| {
                inv.arg(ms(lease.retention))
                    .arg(outcome)
                    .arg(u8::from(resource.is_some()))
                    .arg(resource.unwrap_or_default())
                    .arg(&self.inner.channel)
                    .arg(lease.key.as_bytes().as_slice());
            })
            .await?;
        Self::lease_ack(&reply, "complete reply")
    }

    async fn fail(&self, lease: &Lease, failure: Failure) -> Result<(), StoreError> {
        let reply = self
            .lease_op("fail", &scripts::FAIL, lease, |inv| {
                inv.arg(ms(lease.retention))
                    .arg(failure.reason)
                    .arg(u8::from(failure.retryable))
                    .arg(&self.inner.channel)
                    .arg(lease.key.as_bytes().as_slice());
            })
            .await?;
        Self::lease_ack(&reply, "fail reply")
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let reply = self
            .lease_op("release", &scripts::RELEASE, lease, |inv| {
                inv.arg(&self.inner.channel)
                    .arg(lease.key.as_bytes().as_slice());
            })
            .await?;
        Self::lease_ack(&reply, "release reply")
    }

    async fn renew(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let reply = self
            .lease_op("renew", &scripts::RENEW, lease, |inv| {
                inv.arg(ms(lease.lease_duration));
            })
            .await?;
        match reply {
            Value::Nil => Err(StoreError::LeaseLost),
            other => Ok(Lease {
                deadline: Timestamp::from_millis(uint(&other)?),
                ..lease.clone()
            }),
        }
    }

    /// One `get` script run. A record that cannot be decoded is marked
    /// corrupted (and read back as such).
    async fn get(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        for _ in 0..MAX_RETRIES {
            let (now, fields) = self.read(key).await?;
            let Some(fields) = fields else {
                return Ok(None);
            };
            match codec::record(*key, &fields) {
                Ok(record) => return Ok(Some(record)),
                Err(detail) => {
                    let fence = codec::fence_of(&fields);
                    match Box::pin(self.mark_if(key, &detail, fence, codec::state_of(&fields)))
                        .await?
                    {
                        Mark::Marked => {
                            return Ok(Some(corrupted_record(*key, &fields, detail, now)));
                        }
                        Mark::Gone | Mark::Changed => continue,
                    }
                }
            }
        }
        Err(protocol(
            "record kept changing while being marked corrupted",
        ))
    }

    /// One `mark_corrupted` script run, compare-and-set on the observed
    /// state letter and fence.
    async fn mark_corrupted(
        &self,
        key: &StorageKey,
        observed: Observed,
        detail: &str,
    ) -> Result<(), StoreError> {
        let state: &[u8] = match observed.state {
            StateKind::Pending => b"P",
            StateKind::Completed => b"C",
            StateKind::Failed => b"F",
            StateKind::Corrupted => b"X",
            // A state this store never writes: no record can match it.
            _ => return Err(StoreError::Conflict),
        };
        let mut inv = Eval::new(&scripts::MARK_CORRUPTED, self.key_arg(key));
        inv.arg(self.offset())
            .arg(detail)
            .arg(observed.fence)
            .arg(state)
            .arg(&self.inner.channel)
            .arg(key.as_bytes().as_slice());
        match int(&self.eval("mark_corrupted", &inv).await?) {
            Some(1) => Ok(()),
            Some(0) => Err(StoreError::NotFound),
            Some(2) => Err(StoreError::Conflict),
            _ => Err(protocol("mark_corrupted reply")),
        }
    }

    async fn resolve(
        &self,
        key: &StorageKey,
        resolution: Resolution,
    ) -> Result<Record, StoreError> {
        let (mode, reason, retryable) = match resolution {
            Resolution::Delete => ("D", String::new(), false),
            Resolution::Fail(f) => ("F", f.reason, f.retryable),
            _ => return Err(protocol("unknown resolution")),
        };
        let mut inv = self.eval_with_floor(&scripts::RESOLVE, key);
        inv.arg(self.offset())
            .arg(mode)
            .arg(reason)
            .arg(u8::from(retryable))
            .arg(&self.inner.channel)
            .arg(key.as_bytes().as_slice());
        let reply = self.eval("resolve", &inv).await?;
        let items = array(&reply)?;
        match tag(items)? {
            b"N" => Err(StoreError::NotFound),
            b"S" => Err(StoreError::InvalidState {
                operation: "resolve",
                state: match items.get(1).and_then(bytes) {
                    Some(b"C") => "COMPLETED",
                    Some(b"F") => "FAILED",
                    _ => return Err(protocol("resolve state")),
                },
            }),
            b"OK" => {
                let [_, now, fields] = items else {
                    return Err(protocol("resolve reply"));
                };
                let now = uint(now)?;
                let fields = array(fields)?;
                Ok(codec::record(*key, fields)
                    .unwrap_or_else(|detail| corrupted_record(*key, fields, detail, now)))
            }
            _ => Err(protocol("resolve reply tag")),
        }
    }

    /// Waits for a change notification on `<prefix>:changes` (see the crate
    /// documentation, "Waiting"), re-checking the record at least every
    /// `wait_poll_interval` and never past the lease deadline.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped waiter only unregisters itself.
    async fn wait_for_change(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let subscriber = &self.inner.subscriber;
        if !subscriber.ensure_running() {
            tokio::time::sleep(timeout.min(FALLBACK_POLL)).await;
            return Ok(());
        }
        let timeout = timeout.min(self.inner.config.wait_poll_interval);
        // The first local waiter marks the record; the others share its
        // wake-up (the hub wakes every local waiter of the key).
        wait::wait_for_change(&subscriber.hub.waiters, key, timeout, |first| {
            self.pending_lease_left(key, first)
        })
        .await
    }
}

/// The feed of `idempotency_core::cache::ReplayCache`: every key published
/// on `<prefix>:changes` (a superset of the completed records that changed:
/// marked corrupted, resolved, re-claimed), live while subscribed. Redis
/// removes an expired record by itself, unannounced; a cache stops serving
/// an entry before its expiry anyway. A record deleted by hand (`DEL`) is
/// not announced either.
impl idempotency_core::cache::Invalidations for RedisStore {
    fn invalidations(&self) -> idempotency_core::cache::InvalidationFeed {
        let subscriber = &self.inner.subscriber;
        let feed = subscriber.hub.invalidations.subscribe();
        subscriber.ensure_running();
        feed
    }
}

impl ClockControl for RedisStore {
    /// Adds `by` to the offset every script adds to the Redis server's clock.
    /// Per store value (and its clones); other processes are unaffected.
    fn advance(&self, by: Duration) {
        self.inner.offset_ms.fetch_add(ms(by), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idempotency_core::MAX_STORE_MILLIS as MAX_MS;

    /// Redis Cluster's key slot: CRC16 (XMODEM) of the hash tag, mod 16384.
    fn slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
            let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        });
        crc16(tagged.unwrap_or(bytes)) % 16384
    }

    fn crc16(data: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for &b in data {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    fn store(prefix: &str) -> RedisStore {
        RedisStore::new(RedisConfig::new("redis://127.0.0.1:6379").prefix(prefix)).unwrap()
    }

    #[test]
    fn crc16_matches_the_cluster_specification() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
    }

    #[test]
    fn a_record_key_hashes_like_its_storage_key() {
        for prefix in ["idem", "a:b", "tenant-7:orders", "x{"] {
            let Ok(store) = RedisStore::new(RedisConfig::new("redis://x").prefix(prefix)) else {
                assert!(prefix.contains('{'), "only braces are refused");
                continue;
            };
            for i in 0..256u32 {
                let key = StorageKey::from_segments(&[i.to_be_bytes()]);
                let record_key = store.record_key(&key);
                assert_eq!(record_key, format!("{prefix}:{{{}}}", key.to_hex()));
                assert_eq!(slot(&record_key), slot(&key.to_hex()));
            }
        }
        // Different records spread over the slots.
        let store = store("idem");
        let slots: std::collections::HashSet<u16> = (0..256u32)
            .map(|i| slot(&store.record_key(&StorageKey::from_segments(&[i.to_be_bytes()]))))
            .collect();
        assert!(slots.len() > 200);
    }

    #[test]
    fn the_fence_floor_shares_the_records_slot() {
        let store = store("idem");
        for i in 0..256u32 {
            let key = StorageKey::from_segments(&[i.to_be_bytes()]);
            let floor = store.fence_key(&key);
            assert_eq!(floor, format!("{}:fence", store.record_key(&key)));
            assert_eq!(slot(&floor), slot(&store.record_key(&key)));
            assert_eq!(
                store.floor_arg(&key).to_redis_args(),
                vec![floor.into_bytes()]
            );
        }
    }

    #[test]
    fn every_script_touches_only_its_records_slot() {
        let sources = [
            include_str!("../lua/prelude.lua"),
            include_str!("../lua/common.lua"),
            include_str!("../lua/claim_fast.lua"),
            include_str!("../lua/claim.lua"),
            include_str!("../lua/complete_fast.lua"),
            include_str!("../lua/complete.lua"),
            include_str!("../lua/fail.lua"),
            include_str!("../lua/release.lua"),
            include_str!("../lua/renew.lua"),
            include_str!("../lua/get.lua"),
            include_str!("../lua/mark_corrupted.lua"),
            include_str!("../lua/resolve.lua"),
        ];
        for src in sources {
            let code: String = src
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            // KEYS[1] is the record, KEYS[2] its fence floor (same slot,
            // see `the_fence_floor_shares_the_records_slot`); nothing else.
            for (i, _) in code.match_indices("KEYS[") {
                assert!(
                    code[i..].starts_with("KEYS[1]") || code[i..].starts_with("KEYS[2]"),
                    "a script uses another key"
                );
            }
        }
    }

    #[test]
    fn the_read_first_asks_for_the_scripts_fields() {
        let quoted: Vec<String> = codec::FIELD_NAMES
            .iter()
            .map(|f| format!("'{f}'"))
            .collect();
        let common = format!("local FIELDS = {{ {} }}", quoted.join(", "));
        assert!(include_str!("../lua/common.lua").contains(&common));
        let replay: String = include_str!("../lua/claim_fast.lua")
            .split_whitespace()
            .collect();
        assert!(replay.contains(&format!("HMGET',KEYS[1],{})", quoted.join(","))));
    }

    #[test]
    fn the_key_argument_is_the_record_key() {
        for prefix in ["idem", "a:b", "tenant-7:orders", "é"] {
            let store = store(prefix);
            for i in 0..64u32 {
                let key = StorageKey::from_segments(&[i.to_be_bytes()]);
                assert_eq!(
                    store.key_arg(&key).to_redis_args(),
                    vec![store.record_key(&key).into_bytes()]
                );
            }
        }
    }

    #[test]
    fn durations_are_clamped_for_lua() {
        assert_eq!(ms(Duration::from_millis(1500)), 1500);
        assert_eq!(ms(Duration::MAX), MAX_MS);
        assert!((MAX_MS as f64) * 3.0 < 9.0e15, "sums stay exact in doubles");
    }
}
