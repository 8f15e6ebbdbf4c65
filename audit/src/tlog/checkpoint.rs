//! The C2SP `tlog-checkpoint` text: origin line, tree size, base64 root hash.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::note::{NoteSigner, NoteVerifier};
use super::{Hash, TlogError};

/// A log's commitment to its first `size` entries: the body of a signed
/// checkpoint (C2SP `tlog-checkpoint`).
///
/// ```text
/// audit.example.com/%2Fpromotions
/// 1523
/// CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity (for this crate: the key name, a slash, the
    /// percent-encoded stream; see [`origin_for`]).
    pub origin: String,
    /// The number of entries.
    pub size: u64,
    /// The RFC 6962 root of the first `size` entries.
    pub root: Hash,
    /// Extension lines after the root, kept as read (this crate writes none).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Self {
        Self {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The checkpoint text: one line each for origin, size and base64 root,
    /// then any extension lines, each ending in a newline.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for ext in &self.extensions {
            let _ = writeln!(s, "{ext}");
        }
        s
    }

    /// Reads a checkpoint text.
    ///
    /// # Errors
    ///
    /// [`TlogError::MalformedCheckpoint`] when a line is missing or malformed:
    /// an empty origin, a size that is not decimal without leading zeros, a
    /// root that is not the base64 of 32 bytes, an empty extension line.
    pub fn parse(text: &str) -> Result<Self, TlogError> {
        let bad = |detail: &str| TlogError::MalformedCheckpoint {
            detail: detail.to_owned(),
        };
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("text does not end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("empty origin"))?;
        let size = lines.next().ok_or_else(|| bad("no size line"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad("size is not a decimal number without leading zeros"));
        }
        let size: u64 = size.parse().map_err(|_| bad("size is out of range"))?;
        let root = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root hash is not the base64 of 32 bytes"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// Signs the checkpoint: the signed note text.
    ///
    /// # Errors
    ///
    /// [`TlogError::MalformedNote`] when the origin holds a newline.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, TlogError> {
        if self.origin.contains('\n') || self.extensions.iter().any(|e| e.contains('\n')) {
            return Err(TlogError::MalformedNote {
                detail: "a checkpoint line holds a newline",
            });
        }
        signer.sign(&self.to_text())
    }

    /// Verifies a signed checkpoint note with `verifier` and reads it.
    ///
    /// # Errors
    ///
    /// As [`NoteVerifier::open`] and [`parse`](Self::parse).
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Self, TlogError> {
        Self::parse(verifier.open(note)?)
    }
}

/// Characters kept as they are in a stream's part of an origin.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The origin of a stream's checkpoints: `<log>/<stream>`, the stream
/// percent-encoded (every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`), so that
/// the origin has no space or `+`, as C2SP recommends, and names exactly one
/// stream: `/promotions` of log `audit.example.com` is
/// `audit.example.com/%2Fpromotions`.
pub fn origin_for(log: &str, stream: &str) -> String {
    let mut s = String::with_capacity(log.len() + 1 + stream.len() * 3);
    s.push_str(log);
    s.push('/');
    for b in stream.bytes() {
        if unreserved(b) {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// The stream named by an origin of log `log` (the inverse of
/// [`origin_for`]), or `None` when the origin belongs to another log or is
/// not encoded as [`origin_for`] encodes it.
pub fn stream_of_origin(log: &str, origin: &str) -> Option<String> {
    let encoded = origin.strip_prefix(log)?.strip_prefix('/')?;
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = encoded.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return None;
                }
                let b = u8::from_str_radix(hex, 16).ok()?;
                if unreserved(b) {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if unreserved(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    let stream = String::from_utf8(out).ok()?;
    (origin_for(log, &stream) == origin).then_some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of C2SP tlog-checkpoint.
    const SPEC_EXAMPLE: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn reads_and_writes_the_spec_example() {
        let cp = Checkpoint::parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20852163);
        assert_eq!(cp.to_text(), SPEC_EXAMPLE);
        let ext = format!("{SPEC_EXAMPLE}extension one\n");
        let cp = Checkpoint::parse(&ext).unwrap();
        assert_eq!(cp.extensions, ["extension one"]);
        assert_eq!(cp.to_text(), ext);
    }

    #[test]
    fn malformed_checkpoints() {
        for bad in [
            "",
            "origin\n",
            "origin\n5\n",
            "\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n05\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n-5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n99999999999999999999\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2\n",
            "o\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",
            "o\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
        ] {
            assert!(
                matches!(
                    Checkpoint::parse(bad),
                    Err(TlogError::MalformedCheckpoint { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            Checkpoint::parse("o\n0\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")
                .unwrap()
                .size,
            0
        );
    }

    #[test]
    fn signed_checkpoints_round_trip_and_tampering_fails() {
        let signer = NoteSigner::generate("audit.example.com").unwrap();
        let cp = Checkpoint::new(origin_for("audit.example.com", "/promotions"), 42, [7; 32]);
        let note = cp.sign(&signer).unwrap();
        assert!(note.starts_with("audit.example.com/%2Fpromotions\n42\n"));
        assert!(note.contains("\n\n\u{2014} audit.example.com "));
        assert_eq!(Checkpoint::open(&note, &signer.verifier()).unwrap(), cp);
        let forged = note.replace("\n42\n", "\n41\n");
        assert!(Checkpoint::open(&forged, &signer.verifier()).is_err());
        let other = NoteSigner::generate("audit.example.com").unwrap();
        assert!(Checkpoint::open(&note, &other.verifier()).is_err());
        let mut bad = cp.clone();
        bad.origin.push('\n');
        assert!(bad.sign(&signer).is_err());
    }

    #[test]
    fn origins_name_one_stream() {
        let log = "audit.example.com";
        for stream in ["/promotions", "a b+c", "tenant:acme", "é/ü", "%2F", "-._~"] {
            let origin = origin_for(log, stream);
            assert!(!origin.contains(' ') && !origin.contains('+'), "{origin}");
            assert_eq!(stream_of_origin(log, &origin).as_deref(), Some(stream));
        }
        assert_eq!(origin_for(log, "/p"), "audit.example.com/%2Fp");
        assert_eq!(stream_of_origin("other.log", &origin_for(log, "/p")), None);
        for bad in [
            "audit.example.com",
            "audit.example.com/%2f",
            "audit.example.com/%41",
            "audit.example.com/a b",
            "audit.example.com/%2",
        ] {
            assert_eq!(stream_of_origin(log, bad), None, "{bad}");
        }
    }
}
