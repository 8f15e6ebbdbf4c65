//! Audit evidence outside the database: an RFC 6962 Merkle tree over each
//! stream, signed C2SP checkpoints, inclusion and consistency proofs any
//! third party can check offline, and a place to keep the checkpoints.
//!
//! | file | step |
//! |---|---|
//! | `merkle` | the tree: leaf and node hashes, roots, proofs, their verification |
//! | `note` | Ed25519 keys and C2SP signed notes |
//! | `checkpoint` | the C2SP `tlog-checkpoint` text: origin, size, root |
//! | `proof` | proof documents and their offline verification |
//! | `store` | where checkpoints are kept: [`CheckpointStore`], [`DirStore`] |
//!
//! See the crate README, section "Checkpoints and proofs", for the design.

use std::path::PathBuf;

mod checkpoint;
mod merkle;
mod note;
mod proof;
mod store;

pub use checkpoint::{Checkpoint, origin_for, stream_of_origin};
pub use merkle::{
    EMPTY_ROOT, Hash, MerkleTree, ProofError, leaf_hash, node_hash, root_of, verify_consistency,
    verify_inclusion,
};
pub use note::{MAX_NOTE_LEN, NoteSigner, NoteVerifier, key_id};
pub use proof::{
    ConsistencyProof, InclusionProof, PROOF_FORMAT, VerifiedInclusion, cloudevent_of_content,
    content_of_cloudevent, event_leaf,
};
pub use store::{CheckpointStore, DirStore};

/// Why a checkpoint, a note, a key or a proof was refused, or could not be
/// read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlogError {
    /// A key text is malformed, or its ID does not match it.
    #[error("invalid key: {detail}")]
    InvalidKey {
        /// What is wrong.
        detail: &'static str,
    },
    /// A note is not a well-formed signed note.
    #[error("malformed signed note: {detail}")]
    MalformedNote {
        /// What is wrong.
        detail: &'static str,
    },
    /// No signature of the expected key verifies on the note.
    #[error("note not verified: {detail}")]
    UnverifiedNote {
        /// What is wrong.
        detail: &'static str,
    },
    /// A checkpoint text is malformed.
    #[error("malformed checkpoint: {detail}")]
    MalformedCheckpoint {
        /// What is wrong.
        detail: String,
    },
    /// A proof document is malformed or names something else than it should.
    #[error("malformed proof: {detail}")]
    MalformedProof {
        /// What is wrong.
        detail: String,
    },
    /// A proof does not verify.
    #[error("proof does not verify")]
    Proof(#[from] ProofError),
    /// The log is not an extension of a checkpoint taken earlier: it has
    /// fewer events than the checkpoint, or its first `size` events hash to
    /// another root. The log was truncated or rewritten.
    #[error("stream {stream:?} does not extend its checkpoint of size {checkpoint_size}: {detail}")]
    Inconsistent {
        /// The stream.
        stream: String,
        /// The size of the checkpoint it contradicts.
        checkpoint_size: u64,
        /// What differs.
        detail: String,
    },
    /// The stream's rows are not a whole log: a row is missing inside the
    /// stream head's range, or a stored hash is not 32 bytes.
    #[error("stream {stream:?} is broken: {detail}")]
    Broken {
        /// The stream.
        stream: String,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The audit store failed.
    #[error(transparent)]
    Audit(#[from] crate::AuditError),
}
