//! Proof documents: what `audit-verify prove` writes and `verify-proof`
//! checks offline, from the document, the event and the public key alone.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::TlogError;
use super::checkpoint::{Checkpoint, stream_of_origin};
use super::merkle::{Hash, leaf_hash, verify_consistency, verify_inclusion};
use super::note::NoteVerifier;
use crate::canonical::canonical_json;
use crate::chain::chain_hash;

/// The `format` of the proof documents this version writes, followed by
/// `/inclusion/v1` or `/consistency/v1`.
pub const PROOF_FORMAT: &str = "idempotency-audit";

const INCLUSION_FORMAT: &str = "idempotency-audit/inclusion/v1";
const CONSISTENCY_FORMAT: &str = "idempotency-audit/consistency/v1";

/// The leaf of an event: `leaf_hash(chain_hash(prev_hash, seq, stream, content))`,
/// the RFC 6962 leaf hash of the row's chain hash ([`chain_hash`]).
pub fn event_leaf(stream: &str, seq: u64, prev_hash: &[u8; 32], content: &str) -> Hash {
    leaf_hash(&chain_hash(prev_hash, seq, stream, content))
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

mod hex32s {
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    pub(super) fn serialize<S: Serializer>(hs: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hs.len()))?;
        for h in hs {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        if strings.len() > 64 {
            return Err(D::Error::custom("a proof has at most 64 hashes"));
        }
        strings
            .iter()
            .map(|s| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(D::Error::custom)?;
                Ok(out)
            })
            .collect()
    }
}

/// That the event at `seq` of `stream` is in the tree a signed checkpoint
/// commits to.
///
/// As JSON (hashes in lowercase hex):
///
/// ```json
/// {"format": "idempotency-audit/inclusion/v1", "stream": "/promotions", "seq": 42,
///  "prev_hash": "…", "tree_size": 1523, "path": ["…", "…"], "checkpoint": "<signed note>"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Always `idempotency-audit/inclusion/v1`.
    pub format: String,
    /// The event's stream.
    pub stream: String,
    /// Its sequence number (the leaf index is `seq - 1`).
    pub seq: u64,
    /// The stored `prev_hash` of its row (the previous row's chain hash).
    #[serde(with = "hex32")]
    pub prev_hash: [u8; 32],
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// The RFC 9162 inclusion path, leaf to root.
    #[serde(with = "hex32s")]
    pub path: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

/// What a verified inclusion proof established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedInclusion {
    /// The stream.
    pub stream: String,
    /// The event's sequence number.
    pub seq: u64,
    /// The checkpoint the event is included in.
    pub checkpoint: Checkpoint,
}

fn malformed(detail: impl Into<String>) -> TlogError {
    TlogError::MalformedProof {
        detail: detail.into(),
    }
}

/// Reads a checkpoint note and checks it belongs to `stream` of the verifier's log.
fn open_checkpoint(
    note: &str,
    stream: &str,
    verifier: &NoteVerifier,
) -> Result<Checkpoint, TlogError> {
    let cp = Checkpoint::open(note, verifier)?;
    if stream_of_origin(verifier.name(), &cp.origin).as_deref() != Some(stream) {
        return Err(malformed(format!(
            "the checkpoint's origin {:?} is not stream {stream:?} of log {:?}",
            cp.origin,
            verifier.name()
        )));
    }
    Ok(cp)
}

impl InclusionProof {
    /// A proof document (the caller computed `path`).
    pub fn new(
        stream: impl Into<String>,
        seq: u64,
        prev_hash: [u8; 32],
        tree_size: u64,
        path: Vec<Hash>,
        checkpoint: impl Into<String>,
    ) -> Self {
        Self {
            format: INCLUSION_FORMAT.to_owned(),
            stream: stream.into(),
            seq,
            prev_hash,
            tree_size,
            path,
            checkpoint: checkpoint.into(),
        }
    }

    /// Reads a proof document.
    ///
    /// # Errors
    ///
    /// [`TlogError::MalformedProof`] when it is not one.
    pub fn from_json(text: &str) -> Result<Self, TlogError> {
        let proof: Self = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        if proof.format != INCLUSION_FORMAT {
            return Err(malformed(format!(
                "format {:?} is not {INCLUSION_FORMAT}",
                proof.format
            )));
        }
        Ok(proof)
    }

    /// The document as JSON text.
    pub fn to_json(&self) -> String {
        // Strings, integers and string arrays serialise infallibly.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Verifies, offline, that `event` (the event's JSON in any layout:
    /// it is hashed in its RFC 8785 canonical form) is entry `seq` of the
    /// tree of `stream` that the checkpoint, signed by `verifier`'s key,
    /// commits to.
    ///
    /// # Errors
    ///
    /// [`TlogError::UnverifiedNote`] / [`TlogError::MalformedNote`] for the
    /// checkpoint's signature, [`TlogError::MalformedProof`] when the
    /// checkpoint is of another stream or size or `seq` is outside it,
    /// [`TlogError::Proof`] when the event is not the one the tree holds at
    /// `seq` (changed, or never there).
    pub fn verify(
        &self,
        event: &Value,
        verifier: &NoteVerifier,
    ) -> Result<VerifiedInclusion, TlogError> {
        let cp = open_checkpoint(&self.checkpoint, &self.stream, verifier)?;
        if cp.size != self.tree_size {
            return Err(malformed(format!(
                "the proof is for tree size {} but the checkpoint has size {}",
                self.tree_size, cp.size
            )));
        }
        if self.seq == 0 || self.seq > cp.size {
            return Err(malformed(format!(
                "seq {} is not in a checkpoint of {} events",
                self.seq, cp.size
            )));
        }
        let leaf = event_leaf(
            &self.stream,
            self.seq,
            &self.prev_hash,
            &canonical_json(event),
        );
        verify_inclusion(&leaf, self.seq - 1, cp.size, &self.path, &cp.root)?;
        Ok(VerifiedInclusion {
            stream: self.stream.clone(),
            seq: self.seq,
            checkpoint: cp,
        })
    }

    /// The event as an export line: its CloudEvents JSON form (see
    /// [`cloudevent_of_content`]) with the extension attributes `auditstream`,
    /// `auditseq` and `auditproof` (this document as a JSON string:
    /// CloudEvents extension values are scalars).
    pub fn export_line(&self, content: &Value) -> Value {
        let mut ce = cloudevent_of_content(content);
        if let Value::Object(map) = &mut ce {
            map.insert("auditstream".into(), Value::from(self.stream.clone()));
            map.insert("auditseq".into(), Value::from(self.seq));
            map.insert("auditproof".into(), Value::from(self.to_json()));
        }
        ce
    }

    /// Verifies an export line offline: rebuilds the event from its
    /// CloudEvents form and checks the proof it carries.
    ///
    /// # Errors
    ///
    /// [`TlogError::MalformedProof`] when the line carries no proof, or one
    /// of another stream or sequence number, else as [`verify`](Self::verify).
    pub fn verify_export_line(
        line: &Value,
        verifier: &NoteVerifier,
    ) -> Result<VerifiedInclusion, TlogError> {
        let proof = line
            .get("auditproof")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("the line has no auditproof string"))?;
        let proof = Self::from_json(proof)?;
        if line.get("auditstream").and_then(Value::as_str) != Some(proof.stream.as_str())
            || line.get("auditseq").and_then(Value::as_u64) != Some(proof.seq)
        {
            return Err(malformed("auditstream / auditseq differ from the proof's"));
        }
        let event = content_of_cloudevent(line)?;
        proof.verify(&event, verifier)
    }
}

/// The CloudEvents attributes an event's JSON carries at top level.
const CONTEXT: [&str; 5] = ["id", "type", "source", "subject", "time"];

/// The CloudEvents 1.0 structured JSON form of an event's stored content:
/// what [`AuditEvent::to_cloudevent`](crate::AuditEvent::to_cloudevent)
/// gives, built from the JSON value itself so that nothing is lost.
pub fn cloudevent_of_content(content: &Value) -> Value {
    let mut data = content.as_object().cloned().unwrap_or_default();
    let mut ce = Map::new();
    ce.insert("specversion".into(), Value::from("1.0"));
    for attr in CONTEXT {
        if let Some(v) = data.remove(attr) {
            ce.insert(attr.into(), v);
        }
    }
    ce.insert("datacontenttype".into(), Value::from("application/json"));
    ce.insert("data".into(), Value::Object(data));
    Value::Object(ce)
}

/// The event's JSON back from its CloudEvents form (the inverse of
/// [`cloudevent_of_content`]; extension attributes are left out).
///
/// # Errors
///
/// [`TlogError::MalformedProof`] when the value is not such a form.
pub fn content_of_cloudevent(ce: &Value) -> Result<Value, TlogError> {
    let ce = ce
        .as_object()
        .ok_or_else(|| malformed("a CloudEvent is a JSON object"))?;
    if ce.get("specversion").and_then(Value::as_str) != Some("1.0") {
        return Err(malformed("not a CloudEvents 1.0 event"));
    }
    let mut event = ce
        .get("data")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| malformed("the CloudEvent has no data object"))?;
    for attr in CONTEXT {
        if let Some(v) = ce.get(attr)
            && event.insert(attr.into(), v.clone()).is_some()
        {
            return Err(malformed(format!(
                "{attr} is both an attribute and in data"
            )));
        }
    }
    Ok(Value::Object(event))
}

/// That the tree of a stream at one signed checkpoint is a prefix of the
/// tree at a later one: the log only grew.
///
/// ```json
/// {"format": "idempotency-audit/consistency/v1", "stream": "/promotions",
///  "old": "<signed note>", "new": "<signed note>", "path": ["…"]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// Always `idempotency-audit/consistency/v1`.
    pub format: String,
    /// The stream.
    pub stream: String,
    /// The earlier signed checkpoint.
    pub old: String,
    /// The later signed checkpoint.
    pub new: String,
    /// The RFC 9162 consistency proof.
    #[serde(with = "hex32s")]
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    /// A proof document (the caller computed `path`).
    pub fn new(
        stream: impl Into<String>,
        old: impl Into<String>,
        new: impl Into<String>,
        path: Vec<Hash>,
    ) -> Self {
        Self {
            format: CONSISTENCY_FORMAT.to_owned(),
            stream: stream.into(),
            old: old.into(),
            new: new.into(),
            path,
        }
    }

    /// Reads a proof document.
    ///
    /// # Errors
    ///
    /// [`TlogError::MalformedProof`] when it is not one.
    pub fn from_json(text: &str) -> Result<Self, TlogError> {
        let proof: Self = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        if proof.format != CONSISTENCY_FORMAT {
            return Err(malformed(format!(
                "format {:?} is not {CONSISTENCY_FORMAT}",
                proof.format
            )));
        }
        Ok(proof)
    }

    /// The document as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Verifies, offline, both signatures and that the new tree extends the
    /// old one; returns the two checkpoints.
    ///
    /// # Errors
    ///
    /// As [`InclusionProof::verify`]; [`TlogError::Proof`] when the new tree
    /// does not extend the old one.
    pub fn verify(&self, verifier: &NoteVerifier) -> Result<(Checkpoint, Checkpoint), TlogError> {
        let old = open_checkpoint(&self.old, &self.stream, verifier)?;
        let new = open_checkpoint(&self.new, &self.stream, verifier)?;
        verify_consistency(old.size, new.size, &old.root, &new.root, &self.path)?;
        Ok((old, new))
    }
}
