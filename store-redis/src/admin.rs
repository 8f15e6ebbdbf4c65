//! Operator abilities of [`RedisStore`]: [`AdminStore`] (read any record,
//! list records, count expired ones) and [`PurgeExpired`], over a bounded
//! `SCAN` of the store's prefix on every node (every primary of a cluster).
//!
//! The request path never scans: only these operator calls do.

use idempotency_core::{
    AdminRecord, AdminStore, ListFilter, Listing, PurgeExpired, StorageKey, StoreError, Timestamp,
};
use redis::{RedisResult, Value};

use crate::codec::{self, array, bytes, int, uint};
use crate::conn::{Checkout, SharedConn};
use crate::error::map_redis;
use crate::scripts::{self, Eval};
use crate::store::{RedisStore, corrupted_record, protocol};

/// Keys asked for per `SCAN` call (a hint to the server, which walks about
/// that many slots of its table per call whatever matches).
const SCAN_COUNT: usize = 512;

/// One node to scan, and how to reach it.
enum Node {
    /// The single server (multiplexed or pooled modes).
    Single,
    /// A cluster primary, by address.
    #[cfg(feature = "cluster")]
    Primary { host: String, port: u16 },
}

/// A page of a scan: the node's clock and the records found on it.
struct Page {
    now: u64,
    /// Each key with its fields (`None`: not a hash).
    records: Vec<(StorageKey, Option<Vec<Value>>)>,
}

/// `SCAN`'s `MATCH` pattern for the store's record keys,
/// `<prefix>:{*}` with the prefix's glob characters escaped (fence floors,
/// `...}:fence`, do not match).
fn record_pattern(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str(":{*}");
    out
}

/// The storage key inside `<prefix>:{<64 hex>}`, `None` for anything else.
fn storage_key_of(prefix: &str, redis_key: &[u8]) -> Option<StorageKey> {
    let rest = redis_key.strip_prefix(prefix.as_bytes())?;
    let hex = rest.strip_prefix(b":{")?.strip_suffix(b"}")?;
    StorageKey::from_hex(std::str::from_utf8(hex).ok()?)
}

/// The milliseconds of a `TIME` reply, plus `offset`.
fn time_ms(reply: &[u64], offset: u64) -> Result<u64, StoreError> {
    let [secs, micros] = reply[..] else {
        return Err(protocol("TIME reply"));
    };
    Ok(secs
        .saturating_mul(1000)
        .saturating_add(micros / 1000)
        .saturating_add(offset))
}

/// An operator's view of raw fields read at `now` (undecodable records read
/// as corrupted; nothing is marked).
fn admin_record(key: StorageKey, fields: Option<&[Value]>, now: u64) -> AdminRecord {
    let record = match fields {
        None => corrupted_record(key, &[], "record is not a hash".to_owned(), now),
        Some(fields) => codec::record(key, fields)
            .unwrap_or_else(|detail| corrupted_record(key, fields, detail, now)),
    };
    AdminRecord::new(record, Timestamp::from_millis(now))
}

impl RedisStore {
    /// The nodes that hold the store's keys: the server, or every primary
    /// of the cluster (from `CLUSTER SLOTS`).
    async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        let mut conn = self.backend().checkout().await?;
        #[cfg(feature = "cluster")]
        if let Checkout::Shared {
            conn: SharedConn::Cluster(cluster),
            ..
        } = &mut conn
        {
            use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
            let result = cluster
                .route_command(
                    redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await;
            conn.finish(&result);
            return primaries(&result.map_err(map_redis)?);
        }
        conn.finish(&Ok::<_, redis::RedisError>(()));
        Ok(vec![Node::Single])
    }

    /// One `SCAN` call on `node` from `cursor`, then, in one pipeline to the
    /// same node, `TIME` and an `HMGET` of every record key found. Returns
    /// the next cursor (0: done) and the page.
    async fn scan_page(&self, node: &Node, cursor: u64) -> Result<(u64, Page), StoreError> {
        let prefix = self.config().key_prefix();
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(record_pattern(prefix))
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let reply = self.on_node(node, Request::Cmd(scan)).await?;
        let [next, keys] = array(&reply)? else {
            return Err(protocol("SCAN reply"));
        };
        let next = uint(next)?;
        let keys: Vec<StorageKey> = array(keys)?
            .iter()
            .filter_map(|k| storage_key_of(prefix, bytes(k)?))
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("TIME");
        for key in &keys {
            pipe.cmd("HMGET")
                .arg(self.key_arg(key))
                .arg(&codec::FIELD_NAMES[..]);
        }
        let replies = match self.on_node(node, Request::Pipe(pipe)).await? {
            Value::Array(items) => items,
            _ => return Err(protocol("page reply")),
        };
        let mut replies = replies.into_iter();
        let now = match replies.next() {
            Some(Value::Array(time)) => {
                let time: Vec<u64> = time.iter().map(uint).collect::<Result<_, _>>()?;
                time_ms(&time, self.offset())?
            }
            Some(Value::ServerError(e)) => return Err(map_redis(redis::RedisError::from(e))),
            _ => return Err(protocol("TIME reply")),
        };
        let mut records = Vec::with_capacity(keys.len());
        for (key, reply) in keys.into_iter().zip(replies) {
            match reply {
                Value::Array(fields) => {
                    // Gone between the scan and the read: skip it.
                    if fields.iter().any(|f| *f != Value::Nil) {
                        records.push((key, Some(fields)));
                    }
                }
                Value::ServerError(e) if e.code() == "WRONGTYPE" => records.push((key, None)),
                Value::ServerError(e) => return Err(map_redis(redis::RedisError::from(e))),
                _ => return Err(protocol("HMGET reply")),
            }
        }
        Ok((next, Page { now, records }))
    }

    /// Sends a command or a pipeline to `node`.
    async fn on_node(&self, node: &Node, request: Request) -> Result<Value, StoreError> {
        let mut conn = self.backend().checkout().await?;
        let result: RedisResult<Value> = match (node, &mut conn) {
            #[cfg(feature = "cluster")]
            (
                Node::Primary { host, port },
                Checkout::Shared {
                    conn: SharedConn::Cluster(cluster),
                    ..
                },
            ) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                match request {
                    Request::Cmd(cmd) => {
                        cluster
                            .route_command(cmd, RoutingInfo::SingleNode(route))
                            .await
                    }
                    Request::Pipe(pipe) => {
                        let n = pipe.len();
                        cluster
                            .route_pipeline(pipe, 0, n, route)
                            .await
                            .map(Value::Array)
                    }
                }
            }
            (_, conn) => match request {
                Request::Cmd(cmd) => cmd.query_async(conn).await,
                Request::Pipe(pipe) => pipe.query_async(conn).await.map(Value::Array),
            },
        };
        conn.finish(&result);
        result.map_err(map_redis)
    }

    /// Visits every record of the store's prefix on every node, page by
    /// page. A record `visit` answers [`Visit::Purge`] for is deleted if it
    /// is still expired (`purge.lua`); the scan stops after `max_purged`
    /// deletions. Returns how many were deleted.
    async fn scan_records(
        &self,
        mut visit: impl FnMut(StorageKey, Option<&[Value]>, u64) -> Visit + Send,
        max_purged: u64,
    ) -> Result<u64, StoreError> {
        let mut purged = 0;
        for node in self.nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, page) = self.scan_page(&node, cursor).await?;
                for (key, fields) in &page.records {
                    if let Visit::Purge = visit(*key, fields.as_deref(), page.now)
                        && self.purge_one(key).await?
                    {
                        purged += 1;
                        if purged >= max_purged {
                            return Ok(purged);
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(purged)
    }

    /// Runs `purge.lua` on one record: deleted only if still expired.
    async fn purge_one(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let mut inv: Eval = self.eval_with_floor(&scripts::PURGE, key);
        inv.arg(self.offset());
        match int(&self.eval("purge", &inv).await?) {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(protocol("purge reply")),
        }
    }
}

/// What a scan does with a record it visited.
enum Visit {
    Next,
    Purge,
}

enum Request {
    Cmd(redis::Cmd),
    Pipe(redis::Pipeline),
}

/// The primaries in a `CLUSTER SLOTS` reply, each once.
#[cfg(feature = "cluster")]
fn primaries(reply: &Value) -> Result<Vec<Node>, StoreError> {
    let mut nodes: Vec<(String, u16)> = Vec::new();
    for range in array(reply)? {
        let range = array(range)?;
        let primary = range
            .get(2)
            .ok_or_else(|| protocol("CLUSTER SLOTS reply"))?;
        let primary = array(primary)?;
        let host = primary
            .first()
            .and_then(bytes)
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .ok_or_else(|| protocol("CLUSTER SLOTS host"))?;
        let port = primary
            .get(1)
            .and_then(int)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| protocol("CLUSTER SLOTS port"))?;
        if !nodes.iter().any(|(h, p)| *h == host && *p == port) {
            nodes.push((host, port));
        }
    }
    Ok(nodes
        .into_iter()
        .map(|(host, port)| Node::Primary { host, port })
        .collect())
}

/// Operator reads over `SCAN`.
///
/// - [`inspect`](AdminStore::inspect): one read-only script (`admin_read.lua`)
///   on the record's node, expired or not; an undecodable record reads as
///   corrupted and is not marked.
/// - [`list`](AdminStore::list) and [`count_expired`](AdminStore::count_expired):
///   `SCAN` with `MATCH <prefix>:{*}` on the server, or on every primary of
///   a cluster, 512 keys a call, each page's records read with one pipeline
///   (`TIME` and an `HMGET` per key) on the node that holds them. The walk
///   visits the node's whole keyspace (other keys are skipped by the server,
///   but still walked), holds at most twice the listing's limit in memory,
///   and sees a consistent set only on a quiet store: a record written
///   during the scan may or may not be seen (`SCAN`'s guarantee).
impl AdminStore for RedisStore {
    async fn inspect(&self, key: &StorageKey) -> Result<Option<AdminRecord>, StoreError> {
        let mut inv = Eval::new(&scripts::ADMIN_READ, self.key_arg(key));
        inv.arg(self.offset());
        let reply = self.eval("admin_read", &inv).await?;
        let [now, fields] = array(&reply)? else {
            return Err(protocol("admin_read reply"));
        };
        let now = uint(now)?;
        match fields {
            Value::Nil => Ok(None),
            Value::Array(fields) => Ok(Some(admin_record(*key, Some(fields), now))),
            _ => Ok(Some(admin_record(*key, None, now))),
        }
    }

    async fn list(&self, filter: &ListFilter) -> Result<Listing, StoreError> {
        let limit = filter.limit.max(1);
        let mut kept: Vec<AdminRecord> = Vec::new();
        let mut matched = 0_u64;
        self.scan_records(
            |key, fields, now| {
                let record = admin_record(key, fields, now);
                if filter.matches(&record) {
                    matched += 1;
                    kept.push(record);
                    if kept.len() >= 2 * limit {
                        kept.sort_by(AdminRecord::list_order);
                        kept.truncate(limit);
                    }
                }
                Visit::Next
            },
            0,
        )
        .await?;
        let mut listing = Listing::from_matches(kept, limit);
        listing.matched = matched;
        Ok(listing)
    }

    async fn count_expired(&self) -> Result<u64, StoreError> {
        let mut expired = 0;
        self.scan_records(
            |key, fields, now| {
                if fields.is_some() && admin_record(key, fields, now).expired {
                    expired += 1;
                }
                Visit::Next
            },
            0,
        )
        .await?;
        Ok(expired)
    }
}

/// Deletes records that are expired by their stored timestamps but still
/// held (Redis removes a record by its `PX` by itself, which is at least
/// its stored lifetime: this clears what is left behind, e.g. after a
/// `PERSIST` or a restore). Scans as [`AdminStore::list`] does; each
/// deletion is one `purge.lua` run that checks the expiry again, so a record
/// claimed anew meanwhile is kept. The fence floor outlives a deleted record
/// as after a release. Returns after `batch` deletions or a full scan.
impl PurgeExpired for RedisStore {
    async fn purge_expired(&self, batch: usize) -> Result<u64, StoreError> {
        if batch == 0 {
            return Ok(0);
        }
        self.scan_records(
            |key, fields, now| {
                if fields.is_some() && admin_record(key, fields, now).expired {
                    Visit::Purge
                } else {
                    Visit::Next
                }
            },
            u64::try_from(batch).unwrap_or(u64::MAX),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_escapes_glob_characters() {
        assert_eq!(record_pattern("idem"), "idem:{*}");
        assert_eq!(record_pattern(r"a*b?c[d]\e"), r"a\*b\?c\[d\]\\e:{*}");
    }

    #[test]
    fn only_record_keys_of_the_prefix_are_read() {
        let key = StorageKey::from_segments(&[b"k"]);
        let record = format!("idem:{{{}}}", key.to_hex());
        assert_eq!(storage_key_of("idem", record.as_bytes()), Some(key));
        for other in [
            format!("{record}:fence"),
            format!("other:{{{}}}", key.to_hex()),
            "idem:{abc}".to_owned(),
            "idem:changes".to_owned(),
            format!("idem:{{{}}}", "z".repeat(64)),
        ] {
            assert_eq!(storage_key_of("idem", other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn admin_scripts_touch_only_their_records_slot() {
        for src in [
            include_str!("../lua/admin_read.lua"),
            include_str!("../lua/purge.lua"),
        ] {
            let code: String = src
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            for (i, _) in code.match_indices("KEYS[") {
                assert!(code[i..].starts_with("KEYS[1]") || code[i..].starts_with("KEYS[2]"));
            }
        }
        // The read never writes.
        let read = include_str!("../lua/admin_read.lua");
        for write in ["HSET", "DEL", "PEXPIRE", "PUBLISH", "SET'"] {
            assert!(!read.contains(write), "{write}");
        }
    }
}
