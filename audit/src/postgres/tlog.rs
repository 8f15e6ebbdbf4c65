//! The Merkle tree of each stream, read from the events table: signed
//! checkpoints, inclusion and consistency proofs, a full check of the
//! table against a checkpoint, and the periodic [`Checkpointer`].
//!
//! A stream's leaves are its rows in `seq` order; leaf `seq - 1` is
//! `SHA-256(0x00 ‖ hash)`, the RFC 6962 leaf hash of the row's chain hash
//! (which covers `prev_hash`, `seq`, the stream and the content).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use tokio::sync::Mutex;

use super::{PostgresSink, hash32, map_err};
use crate::chain::{GENESIS_HASH, chain_hash};
use crate::error::AuditError;
use crate::time::EventTime;
use crate::tlog::{
    Checkpoint, CheckpointStore, ConsistencyProof, Hash, InclusionProof, MerkleTree, NoteSigner,
    NoteVerifier, TlogError, leaf_hash, origin_for, root_of,
};

/// Rows read per query while reading leaves.
const LEAF_CHUNK: i64 = 65_536;

/// Name of the counter of checkpoints signed, labelled `result`
/// (`signed`, `unchanged`, `refused`, `error`).
pub const CHECKPOINT_METRIC: &str = "audit_checkpoints_total";

/// A stream's tree as last read, kept between calls so that a checkpoint
/// or a proof reads only the rows appended since.
#[derive(Debug, Default)]
struct Cached {
    tree: MerkleTree,
}

/// A checkpoint taken by [`PostgresTlog::checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpointed {
    /// The stream.
    pub stream: String,
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The signed note, as stored.
    pub note: String,
    /// Whether it was signed now (`false`: the stream had not grown since
    /// the latest stored checkpoint, which is returned).
    pub signed: bool,
}

impl fmt::Display for Checkpointed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stream={} size={} root={}",
            if self.signed {
                "signed   "
            } else {
                "unchanged"
            },
            self.stream,
            self.checkpoint.size,
            crate::hex(&self.checkpoint.root)
        )
    }
}

/// Checkpoints and proofs for the streams of a [`PostgresSink`]'s schema,
/// with checkpoints kept in a [`CheckpointStore`] outside the database.
///
/// Each stream is its own log: its tree's leaves follow the stream's `seq`
/// (the table has no global order across streams), and its checkpoints'
/// origin is [`origin_for`]`(key name, stream)`.
///
/// Keeps each stream's tree in memory once read (64 bytes per event), so a
/// later checkpoint or proof reads only the rows appended since. Cheap to
/// clone; clones share the trees.
#[derive(Clone)]
pub struct PostgresTlog<S> {
    sink: PostgresSink,
    store: S,
    verifier: NoteVerifier,
    signer: Option<Arc<NoteSigner>>,
    trees: Arc<Mutex<HashMap<String, Cached>>>,
}

impl<S> fmt::Debug for PostgresTlog<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTlog")
            .field("schema", &self.sink.schema())
            .field("verifier", &self.verifier)
            .field("signs", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

fn inconsistent(stream: &str, size: u64, detail: impl Into<String>) -> TlogError {
    TlogError::Inconsistent {
        stream: stream.to_owned(),
        checkpoint_size: size,
        detail: detail.into(),
    }
}

impl<S: CheckpointStore> PostgresTlog<S> {
    /// Proofs and checks only: checkpoints in `store` are verified with `verifier`.
    pub fn new(sink: PostgresSink, store: S, verifier: NoteVerifier) -> Self {
        Self {
            sink,
            store,
            verifier,
            signer: None,
            trees: Arc::default(),
        }
    }

    /// Proofs, checks and checkpoints signed with `signer`.
    pub fn with_signer(sink: PostgresSink, store: S, signer: NoteSigner) -> Self {
        let mut tlog = Self::new(sink, store, signer.verifier());
        tlog.signer = Some(Arc::new(signer));
        tlog
    }

    /// The sink whose schema is read.
    pub fn sink(&self) -> &PostgresSink {
        &self.sink
    }

    /// The checkpoint store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The key checkpoints are verified with.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    fn sql(&self, template: &str) -> String {
        self.sink.schema.apply(template)
    }

    async fn snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, TlogError> {
        Ok(self
            .sink
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(map_err)?)
    }

    /// `tree` extended with the leaf hashes of rows `after + 1 ..= upto`:
    /// every one of them must exist, with a 32-byte hash. A chunk is hashed
    /// on a blocking thread while the next one is read.
    async fn read_leaves(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        after: u64,
        upto: u64,
        tree: MerkleTree,
    ) -> Result<MerkleTree, TlogError> {
        // One row per chunk: the hashes concatenated in `seq` order. The
        // rows come sorted from the primary key's index in a subquery: an
        // aggregate over a sorted single-table subquery keeps its order in
        // PostgreSQL, and `string_agg(... ORDER BY seq)` would sort them
        // again (twice the time). A row out of place would only make the
        // root differ, never hide a difference: count and bounds are checked.
        let sql = self.sql(
            "SELECT count(*) AS n, coalesce(bool_and(octet_length(hash) = 32), true) AS ok, \
                    string_agg(hash, ''::bytea) AS hashes \
             FROM (SELECT hash FROM {{schema}}.events \
                   WHERE stream = $1 AND seq > $2 AND seq <= $3 ORDER BY seq) AS chunk",
        );
        let join = |r: Result<MerkleTree, tokio::task::JoinError>| {
            r.map_err(|e| TlogError::Audit(AuditError::backend(e.to_string())))
        };
        let mut tree = Some(tree);
        let mut hashing: Option<tokio::task::JoinHandle<MerkleTree>> = None;
        let mut from = after;
        while from < upto {
            let to = upto.min(from + LEAF_CHUNK as u64);
            let row = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(stream)
                .bind(from as i64)
                .bind(to as i64)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_err)?;
            let n: i64 = row.try_get("n").map_err(map_err)?;
            let ok: bool = row.try_get("ok").map_err(map_err)?;
            let hashes: Option<Vec<u8>> = row.try_get("hashes").map_err(map_err)?;
            if n.unsigned_abs() != to - from {
                return Err(TlogError::Broken {
                    stream: stream.to_owned(),
                    detail: format!(
                        "{n} rows with seq {}..={to}, not {}: rows are missing",
                        from + 1,
                        to - from
                    ),
                });
            }
            if !ok {
                return Err(TlogError::Broken {
                    stream: stream.to_owned(),
                    detail: format!("a stored hash in seq {}..={to} is not 32 bytes", from + 1),
                });
            }
            let hashes = hashes.unwrap_or_default();
            if let Some(task) = hashing.take() {
                tree = Some(join(task.await)?);
            }
            let mut t = tree.take().unwrap_or_default();
            if hashes.len() < 32 * 4096 {
                // A few rows (the usual case once cached): no thread hop.
                t.extend(hashes.chunks_exact(32).map(leaf_hash));
                tree = Some(t);
            } else {
                hashing = Some(tokio::task::spawn_blocking(move || {
                    t.extend(hashes.chunks_exact(32).map(leaf_hash));
                    t
                }));
            }
            from = to;
        }
        match hashing {
            Some(task) => join(task.await),
            None => Ok(tree.unwrap_or_default()),
        }
    }

    /// The stream's tree up to its head, read into the cache (only the rows
    /// after what is cached), then `f` on it.
    async fn with_tree<T>(
        &self,
        stream: &str,
        f: impl FnOnce(&MerkleTree) -> Result<T, TlogError>,
    ) -> Result<T, TlogError> {
        crate::postgres::validate_stream(stream)?;
        // No snapshot is needed: rows up to the head are committed with it
        // and never change (short of tampering, which the checks catch).
        let mut conn = self.sink.pool.acquire().await.map_err(map_err)?;
        let mut trees = self.trees.lock().await;
        let cached = trees.entry(stream.to_owned()).or_default();
        let known = cached.tree.size();
        // The head and the last cached row, in one round trip.
        let row = sqlx::query(AssertSqlSafe(self.sql(
            "SELECT (SELECT last_seq FROM {{schema}}.streams WHERE stream = $1) AS head, \
                    (SELECT hash FROM {{schema}}.events WHERE stream = $1 AND seq = $2) AS last",
        )))
        .bind(stream)
        .bind(known as i64)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
        let head = row
            .try_get::<Option<i64>, _>("head")
            .map_err(map_err)?
            .unwrap_or(0)
            .unsigned_abs();
        let last: Option<Vec<u8>> = row.try_get("last").map_err(map_err)?;
        if known > head {
            // The head went back: nothing cached can be trusted for it.
            let err = inconsistent(
                stream,
                known,
                format!("the stream head is at {head}, below {known} events read earlier"),
            );
            trees.remove(stream);
            return Err(err);
        }
        // The last cached row must still be there, unchanged; else read all again.
        if known > 0 && last.as_deref().map(leaf_hash) != cached.tree.leaf(known - 1) {
            cached.tree = MerkleTree::new();
        }
        let from = cached.tree.size();
        let tree = std::mem::take(&mut cached.tree);
        match self.read_leaves(&mut conn, stream, from, head, tree).await {
            Ok(tree) => {
                let out = f(&tree);
                cached.tree = tree;
                out
            }
            Err(e) => {
                trees.remove(stream);
                Err(e)
            }
        }
    }

    /// The stream's latest stored checkpoint, verified.
    async fn latest(&self, stream: &str) -> Result<Option<(Checkpoint, String)>, TlogError> {
        match self.store.latest(stream).await? {
            None => Ok(None),
            Some(note) => Ok(Some((self.open(stream, &note)?, note))),
        }
    }

    fn open(&self, stream: &str, note: &str) -> Result<Checkpoint, TlogError> {
        let cp = Checkpoint::open(note, &self.verifier)?;
        if cp.origin != origin_for(self.verifier.name(), stream) {
            return Err(TlogError::MalformedCheckpoint {
                detail: format!("origin {:?} is not stream {stream:?}", cp.origin),
            });
        }
        Ok(cp)
    }

    /// Takes a checkpoint of `stream`: reads its tree, checks that it
    /// extends the latest stored checkpoint (same root at that size), signs
    /// a checkpoint of the current size and stores it. Returns `None` for a
    /// stream without events.
    ///
    /// # Errors
    ///
    /// [`TlogError::Inconsistent`] when the table no longer holds what the
    /// latest checkpoint committed to (rows removed, changed or forged), or
    /// [`TlogError::Broken`] when a row inside the head's range is missing:
    /// the checkpoint is refused, so the evidence of the tampering stays;
    /// [`TlogError::MalformedNote`] when built without a signer; store and
    /// database errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a checkpoint is stored atomically or not at all.
    pub async fn checkpoint(&self, stream: &str) -> Result<Option<Checkpointed>, TlogError> {
        let signer = self.signer.clone().ok_or(TlogError::InvalidKey {
            detail: "no signer key: this PostgresTlog only verifies",
        })?;
        let latest = self.latest(stream).await?;
        let origin = origin_for(signer.name(), stream);
        let (size, root) = self
            .with_tree(stream, |tree| {
                if let Some((cp, _)) = &latest {
                    check_extends(stream, tree, cp)?;
                }
                Ok((tree.size(), tree.root()))
            })
            .await?;
        if size == 0 {
            return Ok(None);
        }
        if let Some((cp, note)) = latest
            && cp.size == size
        {
            return Ok(Some(Checkpointed {
                stream: stream.to_owned(),
                checkpoint: cp,
                note,
                signed: false,
            }));
        }
        let checkpoint = Checkpoint::new(origin, size, root);
        let note = checkpoint.sign(&signer)?;
        self.store.save(stream, size, &note).await?;
        Ok(Some(Checkpointed {
            stream: stream.to_owned(),
            checkpoint,
            note,
            signed: true,
        }))
    }

    /// The stored checkpoint of `stream` of `size` events, or the latest.
    async fn stored(
        &self,
        stream: &str,
        size: Option<u64>,
    ) -> Result<(Checkpoint, String), TlogError> {
        let note = match size {
            Some(size) => self.store.get(stream, size).await?,
            None => self.store.latest(stream).await?,
        };
        let note = note.ok_or_else(|| TlogError::MalformedProof {
            detail: match size {
                Some(size) => format!("no stored checkpoint of stream {stream:?} of size {size}"),
                None => format!("no stored checkpoint of stream {stream:?}"),
            },
        })?;
        Ok((self.open(stream, &note)?, note))
    }

    /// An inclusion proof of the event at `seq` of `stream` against its
    /// stored checkpoint of `size` events (the latest when `None`), and the
    /// event's stored content (its canonical JSON).
    ///
    /// # Errors
    ///
    /// [`TlogError::MalformedProof`] when there is no such checkpoint or
    /// `seq` is not in it, [`TlogError::Inconsistent`] when the table no
    /// longer matches the checkpoint, database and store errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn prove_inclusion(
        &self,
        stream: &str,
        seq: u64,
        size: Option<u64>,
    ) -> Result<(InclusionProof, String), TlogError> {
        let (cp, note) = self.stored(stream, size).await?;
        if seq == 0 || seq > cp.size {
            return Err(TlogError::MalformedProof {
                detail: format!("seq {seq} is not in the checkpoint of {} events", cp.size),
            });
        }
        let path = self
            .with_tree(stream, |tree| {
                check_extends(stream, tree, &cp)?;
                Ok(tree.inclusion_proof(seq - 1, cp.size)?)
            })
            .await?;
        let row = sqlx::query(AssertSqlSafe(self.sql(
            "SELECT prev_hash, content::text AS content FROM {{schema}}.events \
             WHERE stream = $1 AND seq = $2",
        )))
        .bind(stream)
        .bind(seq as i64)
        .fetch_optional(&self.sink.pool)
        .await
        .map_err(map_err)?
        .ok_or_else(|| inconsistent(stream, cp.size, format!("row {seq} is missing")))?;
        let prev: Vec<u8> = row.try_get("prev_hash").map_err(map_err)?;
        let content: String = row.try_get("content").map_err(map_err)?;
        let proof = InclusionProof::new(stream, seq, hash32(&prev)?, cp.size, path, note);
        Ok((proof, content))
    }

    /// A consistency proof between the stored checkpoints of `stream` of
    /// `old` events and of `new` events (the latest when `None`).
    ///
    /// # Errors
    ///
    /// As [`prove_inclusion`](Self::prove_inclusion).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn prove_consistency(
        &self,
        stream: &str,
        old: u64,
        new: Option<u64>,
    ) -> Result<ConsistencyProof, TlogError> {
        let (old_cp, old_note) = self.stored(stream, Some(old)).await?;
        let (new_cp, new_note) = self.stored(stream, new).await?;
        if old_cp.size > new_cp.size {
            return Err(TlogError::MalformedProof {
                detail: format!("checkpoint {} is newer than {}", old_cp.size, new_cp.size),
            });
        }
        let path = self
            .with_tree(stream, |tree| {
                check_extends(stream, tree, &old_cp)?;
                check_extends(stream, tree, &new_cp)?;
                Ok(tree.consistency_proof(old_cp.size, new_cp.size)?)
            })
            .await?;
        Ok(ConsistencyProof::new(stream, old_note, new_note, path))
    }

    /// Checks the table against the latest stored checkpoint of `stream`,
    /// trusting nothing stored but the content: recomputes every row's
    /// chain hash from its content (ignoring the stored `hash` and
    /// `prev_hash`), builds the tree of the first `size` rows and compares
    /// its root with the checkpoint's. Returns the checkpoint checked, or
    /// `None` when none is stored.
    ///
    /// This is what catches a superuser's edits: a deleted, changed, forged
    /// or re-hashed row, or a truncated stream, changes the root or the
    /// count, whatever the chain columns and the head say.
    ///
    /// # Errors
    ///
    /// [`TlogError::Inconsistent`] naming the first difference found;
    /// database and store errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn verify_against_checkpoint(
        &self,
        stream: &str,
    ) -> Result<Option<Checkpoint>, TlogError> {
        crate::postgres::validate_stream(stream)?;
        let Some((cp, _)) = self.latest(stream).await? else {
            return Ok(None);
        };
        let mut tx = self.snapshot().await?;
        let sql = self.sql(
            "SELECT seq, content::text AS content FROM {{schema}}.events \
             WHERE stream = $1 AND seq <= $2 ORDER BY seq",
        );
        let mut rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(stream)
            .bind(cp.size as i64)
            .fetch(&mut *tx);
        let mut leaves = Vec::with_capacity(usize::try_from(cp.size).unwrap_or(0).min(1 << 24));
        let mut prev = GENESIS_HASH;
        let mut missing = None;
        while let Some(row) = rows.try_next().await.map_err(map_err)? {
            let seq = row
                .try_get::<i64, _>("seq")
                .map_err(map_err)?
                .unsigned_abs();
            let content: String = row.try_get("content").map_err(map_err)?;
            let expected = leaves.len() as u64 + 1;
            if seq != expected && missing.is_none() {
                missing = Some(expected);
            }
            prev = chain_hash(&prev, seq, stream, &content);
            leaves.push(leaf_hash(&prev));
        }
        drop(rows);
        tx.rollback().await.map_err(map_err)?;
        if let Some(seq) = missing {
            return Err(inconsistent(
                stream,
                cp.size,
                format!("row {seq} is missing"),
            ));
        }
        if (leaves.len() as u64) < cp.size {
            return Err(inconsistent(
                stream,
                cp.size,
                format!("the table holds {} of its events", leaves.len()),
            ));
        }
        if root_of(leaves) != cp.root {
            return Err(inconsistent(
                stream,
                cp.size,
                "its events, recomputed from their content, hash to another root: \
                 a row was changed, forged or re-hashed",
            ));
        }
        Ok(Some(cp))
    }

    /// Writes every event of `stream` whose `time` is at or after `since`
    /// and which the latest stored checkpoint covers, as one JSON line each
    /// (see [`InclusionProof::export_line`]): the event in CloudEvents form
    /// with its inclusion proof. Returns the lines written and the events
    /// at or after `since` left out because no checkpoint covers them yet.
    /// The selected events are held in memory while their proofs are made:
    /// export a long history in several runs of `since`.
    ///
    /// # Errors
    ///
    /// As [`prove_inclusion`](Self::prove_inclusion), and
    /// [`TlogError::Io`] when writing fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads; a dropped export leaves `out` part-written.
    pub async fn export(
        &self,
        stream: &str,
        since: EventTime,
        out: &mut impl Write,
    ) -> Result<(u64, u64), TlogError> {
        let (cp, note) = self.stored(stream, None).await?;
        let sql = self.sql(
            "SELECT seq, prev_hash, content::text AS content FROM {{schema}}.events \
             WHERE stream = $1 AND time >= timestamptz 'epoch' \
                   + ($2::int8 / 1000000) * interval '1 second' \
                   + ($2::int8 % 1000000) * interval '1 microsecond' \
             ORDER BY seq",
        );
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(stream)
            .bind(since.unix_micros())
            .fetch_all(&self.sink.pool)
            .await
            .map_err(map_err)?;
        let mut covered = Vec::with_capacity(rows.len());
        let mut uncovered = 0u64;
        for row in &rows {
            let seq = row
                .try_get::<i64, _>("seq")
                .map_err(map_err)?
                .unsigned_abs();
            if seq > cp.size {
                uncovered += 1;
                continue;
            }
            let prev: Vec<u8> = row.try_get("prev_hash").map_err(map_err)?;
            let content: String = row.try_get("content").map_err(map_err)?;
            let value: Value = serde_json::from_str(&content)
                .map_err(|e| TlogError::Audit(AuditError::backend(format!("row {seq}: {e}"))))?;
            covered.push((seq, hash32(&prev)?, value));
        }
        let paths = self
            .with_tree(stream, |tree| {
                check_extends(stream, tree, &cp)?;
                covered
                    .iter()
                    .map(|(seq, _, _)| Ok(tree.inclusion_proof(seq - 1, cp.size)?))
                    .collect::<Result<Vec<_>, TlogError>>()
            })
            .await?;
        let mut written = 0u64;
        for ((seq, prev, value), path) in covered.into_iter().zip(paths) {
            let proof = InclusionProof::new(stream, seq, prev, cp.size, path, note.clone());
            let line = proof.export_line(&value);
            serde_json::to_writer(&mut *out, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| TlogError::Io {
                    path: "export".into(),
                    source: e,
                })?;
            written += 1;
        }
        Ok((written, uncovered))
    }

    /// The stream names after `after`, as [`PostgresSink::next_stream`].
    async fn next_stream(&self, after: Option<&str>) -> Result<Option<String>, TlogError> {
        Ok(self.sink.next_stream(after).await?)
    }
}

/// Checks that `tree` extends checkpoint `cp`: at least as many leaves, and
/// the same root at its size.
fn check_extends(stream: &str, tree: &MerkleTree, cp: &Checkpoint) -> Result<(), TlogError> {
    if tree.size() < cp.size {
        return Err(inconsistent(
            stream,
            cp.size,
            format!(
                "the table holds {} events, fewer than the checkpoint",
                tree.size()
            ),
        ));
    }
    let root: Hash = tree.root_at(cp.size)?;
    if root != cp.root {
        return Err(inconsistent(
            stream,
            cp.size,
            "its first events hash to another root: rows were changed, removed or forged",
        ));
    }
    Ok(())
}

/// A background task that takes a checkpoint of every stream at a fixed
/// interval (see [`PostgresTlog::spawn_checkpointer`]).
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    /// Stops the task after the round in progress, if any, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl<S: CheckpointStore + Clone + 'static> PostgresTlog<S> {
    /// Takes a checkpoint of every stream, one after the other. A stream
    /// whose checkpoint is refused or fails does not stop the others; each
    /// result is returned in stream order.
    ///
    /// # Errors
    ///
    /// Only listing the streams fails the whole round.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: each checkpoint is stored atomically or not at all.
    pub async fn checkpoint_all(
        &self,
    ) -> Result<Vec<(String, Result<Option<Checkpointed>, TlogError>)>, TlogError> {
        let mut results = Vec::new();
        let mut after: Option<String> = None;
        while let Some(stream) = self.next_stream(after.as_deref()).await? {
            let result = self.checkpoint(&stream).await;
            let label = match &result {
                Ok(Some(c)) if c.signed => "signed",
                Ok(_) => "unchanged",
                Err(TlogError::Inconsistent { .. } | TlogError::Broken { .. }) => "refused",
                Err(_) => "error",
            };
            metrics::counter!(CHECKPOINT_METRIC, "result" => label).increment(1);
            match &result {
                Err(e @ (TlogError::Inconsistent { .. } | TlogError::Broken { .. })) => {
                    tracing::error!(
                        target: "audit",
                        stream = %stream,
                        error = e as &(dyn std::error::Error + 'static),
                        "audit checkpoint refused: the stream does not extend its last checkpoint"
                    )
                }
                Err(e) => tracing::warn!(
                    target: "audit",
                    stream = %stream,
                    error = e as &(dyn std::error::Error + 'static),
                    "audit checkpoint failed"
                ),
                Ok(_) => {}
            }
            results.push((stream.clone(), result));
            after = Some(stream);
        }
        Ok(results)
    }

    /// Spawns a task that calls [`checkpoint_all`](Self::checkpoint_all)
    /// every `every` (the first round at once), logging refusals at error
    /// level and other failures at warn level (target `audit`) and counting
    /// them in `audit_checkpoints_total{result}`. Needs a Tokio runtime.
    pub fn spawn_checkpointer(&self, every: Duration) -> Checkpointer
    where
        S: Send + Sync,
    {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.checkpoint_all().await {
                    tracing::warn!(
                        target: "audit",
                        error = &e as &(dyn std::error::Error + 'static),
                        "audit checkpoint round failed"
                    );
                }
            }
        });
        Checkpointer {
            stop: Some(stop),
            task,
        }
    }
}
