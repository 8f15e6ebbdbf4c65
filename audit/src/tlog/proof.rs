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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::{MerkleTree, NoteSigner, origin_for};
    use serde_json::json;

    const LOG: &str = "log.example";

    /// A stream of `n` events, its tree, and a signed checkpoint of it.
    fn log(n: u64) -> (NoteSigner, Vec<Value>, Vec<[u8; 32]>, MerkleTree) {
        let signer = NoteSigner::generate(LOG).unwrap();
        let events: Vec<Value> = (1..=n).map(|i| json!({"i": i, "type": "t"})).collect();
        let mut prevs = Vec::new();
        let mut prev = crate::GENESIS_HASH;
        let mut tree = MerkleTree::new();
        for (i, e) in events.iter().enumerate() {
            prevs.push(prev);
            let content = canonical_json(e);
            tree.push(event_leaf("/s", i as u64 + 1, &prev, &content));
            prev = chain_hash(&prev, i as u64 + 1, "/s", &content);
        }
        (signer, events, prevs, tree)
    }

    fn note(signer: &NoteSigner, tree: &MerkleTree, size: u64) -> String {
        Checkpoint::new(origin_for(LOG, "/s"), size, tree.root_at(size).unwrap())
            .sign(signer)
            .unwrap()
    }

    fn inclusion(
        signer: &NoteSigner,
        tree: &MerkleTree,
        prevs: &[[u8; 32]],
        seq: u64,
    ) -> InclusionProof {
        let size = tree.size();
        InclusionProof::new(
            "/s",
            seq,
            prevs[seq as usize - 1],
            size,
            tree.inclusion_proof(seq - 1, size).unwrap(),
            note(signer, tree, size),
        )
    }

    #[test]
    fn documents_round_trip_and_malformed_ones_are_refused() {
        let (signer, events, prevs, tree) = log(5);
        let proof = inclusion(&signer, &tree, &prevs, 2);
        let back = InclusionProof::from_json(&proof.to_json()).unwrap();
        assert_eq!(back, proof);
        back.verify(&events[1], &signer.verifier()).unwrap();
        let mut doc: Value = serde_json::from_str(&proof.to_json()).unwrap();
        doc["format"] = json!("idempotency-audit/inclusion/v2");
        assert!(matches!(
            InclusionProof::from_json(&doc.to_string()),
            Err(TlogError::MalformedProof { .. })
        ));
        for (field, bad) in [
            ("prev_hash", json!("zz")),
            ("prev_hash", json!("00")),
            ("path", json!(["00"])),
            ("path", json!(vec![hex::encode([0u8; 32]); 65])),
            ("seq", json!(-1)),
        ] {
            let mut doc: Value = serde_json::from_str(&proof.to_json()).unwrap();
            doc[field] = bad;
            assert!(
                matches!(
                    InclusionProof::from_json(&doc.to_string()),
                    Err(TlogError::MalformedProof { .. })
                ),
                "{field}"
            );
        }
        assert!(InclusionProof::from_json("not json").is_err());
        // Seq outside the checkpoint.
        let mut outside = proof.clone();
        outside.seq = 6;
        assert!(matches!(
            outside.verify(&events[1], &signer.verifier()),
            Err(TlogError::MalformedProof { .. })
        ));
        outside.seq = 0;
        assert!(outside.verify(&events[1], &signer.verifier()).is_err());
        // A wrong prev_hash changes the leaf.
        let mut wrong_prev = proof.clone();
        wrong_prev.prev_hash = [9; 32];
        assert!(matches!(
            wrong_prev.verify(&events[1], &signer.verifier()),
            Err(TlogError::Proof(_))
        ));
        // A consistency document is not an inclusion one, and the reverse.
        let c = ConsistencyProof::new(
            "/s",
            note(&signer, &tree, 2),
            note(&signer, &tree, 5),
            tree.consistency_proof(2, 5).unwrap(),
        );
        assert!(InclusionProof::from_json(&c.to_json()).is_err());
        assert!(ConsistencyProof::from_json(&proof.to_json()).is_err());
    }

    #[test]
    fn consistency_documents_verify_and_tampering_fails() {
        let (signer, _, _, tree) = log(9);
        let v = signer.verifier();
        let proof = ConsistencyProof::new(
            "/s",
            note(&signer, &tree, 3),
            note(&signer, &tree, 9),
            tree.consistency_proof(3, 9).unwrap(),
        );
        let back = ConsistencyProof::from_json(&proof.to_json()).unwrap();
        let (old, new) = back.verify(&v).unwrap();
        assert_eq!((old.size, new.size), (3, 9));
        // Swapped checkpoints, another stream, another key, a changed path.
        let swapped = ConsistencyProof::new(
            "/s",
            proof.new.clone(),
            proof.old.clone(),
            proof.path.clone(),
        );
        assert!(matches!(swapped.verify(&v), Err(TlogError::Proof(_))));
        let mut moved = proof.clone();
        moved.stream = "/t".into();
        assert!(matches!(
            moved.verify(&v),
            Err(TlogError::MalformedProof { .. })
        ));
        assert!(
            proof
                .verify(&NoteSigner::generate(LOG).unwrap().verifier())
                .is_err()
        );
        let mut bad = proof.clone();
        bad.path[0][0] ^= 1;
        assert!(bad.verify(&v).is_err());
        let mut forged = proof.clone();
        forged.new = note(&signer, &MerkleTree::from_leaves([[1u8; 32]; 9]), 9);
        assert!(forged.verify(&v).is_err());
        assert!(matches!(
            ConsistencyProof::from_json(
                "{\"format\":\"x\",\"stream\":\"/s\",\"old\":\"\",\"new\":\"\",\"path\":[]}"
            ),
            Err(TlogError::MalformedProof { .. })
        ));
    }

    #[test]
    fn cloudevent_forms_and_export_lines() {
        let (signer, events, prevs, tree) = log(4);
        let event = json!({"id": "x", "type": "t", "source": "/s", "time": "2024-01-01T00:00:00Z", "n": 1.5, "attributes": {"a": 1}});
        let ce = cloudevent_of_content(&event);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["data"]["n"], 1.5);
        assert!(ce["data"].get("type").is_none());
        assert_eq!(content_of_cloudevent(&ce).unwrap(), event);
        for bad in [
            json!([]),
            json!({"specversion": "0.3", "data": {}}),
            json!({"specversion": "1.0"}),
            json!({"specversion": "1.0", "id": "x", "data": {"id": "y"}}),
        ] {
            assert!(
                matches!(
                    content_of_cloudevent(&bad),
                    Err(TlogError::MalformedProof { .. })
                ),
                "{bad}"
            );
        }
        let proof = inclusion(&signer, &tree, &prevs, 3);
        let line = proof.export_line(&events[2]);
        let ok = InclusionProof::verify_export_line(&line, &signer.verifier()).unwrap();
        assert_eq!((ok.stream.as_str(), ok.seq), ("/s", 3));
        let mut no_proof = line.clone();
        no_proof.as_object_mut().unwrap().remove("auditproof");
        assert!(matches!(
            InclusionProof::verify_export_line(&no_proof, &signer.verifier()),
            Err(TlogError::MalformedProof { .. })
        ));
        let mut other_stream = line.clone();
        other_stream["auditstream"] = json!("/t");
        assert!(InclusionProof::verify_export_line(&other_stream, &signer.verifier()).is_err());
    }
}
