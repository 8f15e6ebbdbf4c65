//! C2SP signed notes with Ed25519 keys: key text, signing, verifying.
//!
//! A note is UTF-8 text ending in a newline, a blank line, and one or more
//! signature lines `— <key name> <base64(key ID ‖ signature)>`, where the
//! key ID is the first 4 bytes of `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)`
//! and the Ed25519 signature covers the text (C2SP `signed-note`). Keys are
//! written as in `golang.org/x/mod/sumdb/note`:
//!
//! - verifier key: `<name>+<key ID as 8 hex digits>+<base64(0x01 ‖ public key)>`
//! - signer key: `PRIVATE+KEY+<name>+<key ID>+<base64(0x01 ‖ 32-byte seed)>`

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::TlogError;

/// The Ed25519 signature type of C2SP signed notes.
const ALG_ED25519: u8 = 0x01;

/// The start of a signature line: an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Longest accepted note, in bytes (a checkpoint is about 100).
pub const MAX_NOTE_LEN: usize = 1 << 20;

/// Whether `name` is a valid key name: non-empty, no Unicode white space,
/// no `+`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key ID: the first 4 bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`.
pub fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn bad_key(detail: &'static str) -> TlogError {
    TlogError::InvalidKey { detail }
}

/// Splits `<name>+<hex id>+<base64>` and checks the ID, the type byte and
/// the key length; returns the name, the ID and the 32 key bytes.
fn parse_key_fields(text: &str) -> Result<(&str, u32, [u8; 32]), TlogError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad_key("expected <name>+<key id>+<key>"));
    };
    if !valid_name(name) {
        return Err(bad_key("key name is empty or holds a space or '+'"));
    }
    if id.len() != 8
        || !id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(bad_key("key id is not 8 lowercase hex digits"));
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| bad_key("key id is not hex"))?;
    let raw = B64
        .decode(key)
        .map_err(|_| bad_key("key is not standard base64"))?;
    match raw.split_first() {
        Some((&ALG_ED25519, bytes)) => {
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad_key("an Ed25519 key has 32 bytes"))?;
            Ok((name, id, bytes))
        }
        Some(_) => Err(bad_key("not an Ed25519 key (type 0x01)")),
        None => Err(bad_key("empty key")),
    }
}

/// A public key that checks signatures of one name (a log).
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Reads a verifier key: `<name>+<key ID>+<base64(0x01 ‖ public key)>`.
    ///
    /// # Errors
    ///
    /// [`TlogError::InvalidKey`] when the text is malformed, the type is not
    /// Ed25519, the key is not a valid point or the ID does not match it.
    pub fn from_text(text: &str) -> Result<Self, TlogError> {
        let (name, id, bytes) = parse_key_fields(text.trim_end())?;
        if key_id(name, &bytes) != id {
            return Err(bad_key("key id does not match the name and key"));
        }
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad_key("not an Ed25519 point"))?;
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// The key name (the log's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// Checks `note` and returns its text (everything before the blank
    /// line), if a signature line of this key's name and ID verifies.
    /// Signatures of other keys are ignored.
    ///
    /// # Errors
    ///
    /// [`TlogError::MalformedNote`] when the note is not a signed note,
    /// [`TlogError::UnverifiedNote`] when no signature of this key is on it
    /// or this key's signature does not verify.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, TlogError> {
        let (text, sigs) = split_note(note)?;
        let mut found = false;
        for (name, blob) in sigs {
            if name != self.name || blob.len() != 68 {
                continue;
            }
            if u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]) != self.id {
                continue;
            }
            found = true;
            let sig = Signature::from_bytes(blob[4..].try_into().unwrap_or(&[0; 64]));
            if self.key.verify_strict(text.as_bytes(), &sig).is_ok() {
                return Ok(text);
            }
        }
        Err(TlogError::UnverifiedNote {
            detail: if found {
                "the signature does not verify"
            } else {
                "no signature by this key"
            },
        })
    }
}

impl fmt::Display for NoteVerifier {
    /// The verifier key text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NoteVerifier")
            .field(&self.to_string())
            .finish()
    }
}

/// A private key that signs notes under one name. Its `Debug` form shows
/// only the public half; the secret leaves only through
/// [`to_secret_text`](Self::to_secret_text).
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl NoteSigner {
    /// A new random key for `name`, from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// [`TlogError::InvalidKey`] for an invalid name, [`TlogError::Io`] when
    /// the system has no randomness to give.
    pub fn generate(name: &str) -> Result<Self, TlogError> {
        if !valid_name(name) {
            return Err(bad_key("key name is empty or holds a space or '+'"));
        }
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| TlogError::Io {
            path: "getrandom".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Self::from_seed(name, &seed))
    }

    fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Self {
            name: name.to_owned(),
            id,
            key,
        }
    }

    /// Reads a signer key: `PRIVATE+KEY+<name>+<key ID>+<base64(0x01 ‖ seed)>`.
    ///
    /// # Errors
    ///
    /// [`TlogError::InvalidKey`] when the text is malformed or the ID does
    /// not match the key.
    pub fn from_text(text: &str) -> Result<Self, TlogError> {
        let rest = text
            .trim_end()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad_key("a signer key starts with PRIVATE+KEY+"))?;
        let (name, id, seed) = parse_key_fields(rest)?;
        let seed = zeroize::Zeroizing::new(seed);
        let signer = Self::from_seed(name, &seed);
        if signer.id != id {
            return Err(bad_key("key id does not match the name and key"));
        }
        Ok(signer)
    }

    /// The signer key text. It is the secret: keep it out of logs.
    pub fn to_secret_text(&self) -> zeroize::Zeroizing<String> {
        let mut raw = zeroize::Zeroizing::new(Vec::with_capacity(33));
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        zeroize::Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            B64.encode(raw.as_slice())
        ))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (UTF-8 ending in a newline, no blank line) and returns
    /// the signed note.
    ///
    /// # Errors
    ///
    /// [`TlogError::MalformedNote`] when the text does not end in a newline,
    /// holds a blank line or is over [`MAX_NOTE_LEN`].
    pub fn sign(&self, text: &str) -> Result<String, TlogError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.id.to_be_bytes());
        blob.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("verifier", &self.verifier().to_string())
            .finish_non_exhaustive()
    }
}

fn malformed(detail: &'static str) -> TlogError {
    TlogError::MalformedNote { detail }
}

fn check_text(text: &str) -> Result<(), TlogError> {
    if text.len() > MAX_NOTE_LEN {
        return Err(malformed("note is too long"));
    }
    if !text.ends_with('\n') {
        return Err(malformed("note text does not end in a newline"));
    }
    if text.starts_with('\n') || text.contains("\n\n") {
        return Err(malformed("note text holds a blank line"));
    }
    Ok(())
}

/// Splits a note into its text and its signature lines (name, decoded blob).
/// A signature line: the key name and the decoded key ID and signature.
type SigLine<'n> = (&'n str, Vec<u8>);

fn split_note(note: &str) -> Result<(&str, Vec<SigLine<'_>>), TlogError> {
    if note.len() > MAX_NOTE_LEN {
        return Err(malformed("note is too long"));
    }
    let split = note
        .find("\n\n")
        .ok_or_else(|| malformed("no blank line before the signatures"))?;
    let (text, sigs) = (&note[..=split], &note[split + 2..]);
    check_text(text)?;
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(malformed("signature lines must end in a newline"));
    }
    let mut out = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| malformed("a signature line starts with an em dash and a space"))?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or_else(|| malformed("a signature line is '— <name> <signature>'"))?;
        if !valid_name(name) {
            return Err(malformed("invalid key name in a signature line"));
        }
        let blob = B64
            .decode(blob)
            .map_err(|_| malformed("a signature is not standard base64"))?;
        if blob.len() < 5 {
            return Err(malformed("a signature is shorter than its key id"));
        }
        out.push((name, blob));
    }
    Ok((text, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note: the package documentation's example key
    // pair and signed note.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n\
                           \n\
                           — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    // C2SP signed-note: the specification's example.
    const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\
                             — example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn signs_exactly_like_go_sumdb_note() {
        let signer = NoteSigner::from_text(GO_SKEY).unwrap();
        assert_eq!(signer.verifier().to_string(), GO_VKEY);
        assert_eq!(signer.verifier().key_id(), 0xc74f20a3);
        assert_eq!(signer.sign(GO_TEXT).unwrap(), GO_NOTE);
        assert_eq!(signer.to_secret_text().as_str(), GO_SKEY);
        let verifier = NoteVerifier::from_text(GO_VKEY).unwrap();
        assert_eq!(verifier.open(GO_NOTE).unwrap(), GO_TEXT);
        assert!(!format!("{signer:?}").contains("AYEKF"));
    }

    #[test]
    fn verifies_the_c2sp_example() {
        let verifier = NoteVerifier::from_text(SPEC_VKEY).unwrap();
        assert_eq!(verifier.name(), "example.com/foo");
        assert_eq!(
            verifier.open(SPEC_NOTE).unwrap(),
            "This is an example message.\n"
        );
        // Its signature is not PeterNeumann's.
        let peter = NoteVerifier::from_text(GO_VKEY).unwrap();
        assert!(matches!(
            peter.open(SPEC_NOTE),
            Err(TlogError::UnverifiedNote { .. })
        ));
    }

    #[test]
    fn tampered_notes_fail() {
        let verifier = NoteVerifier::from_text(GO_VKEY).unwrap();
        let changed = GO_NOTE.replace("answer", "Answer");
        assert!(matches!(
            verifier.open(&changed),
            Err(TlogError::UnverifiedNote { detail }) if detail.contains("does not verify")
        ));
        // Another key's signature appended is ignored; the good one still counts.
        let other = NoteSigner::generate("Other").unwrap();
        let extra_sig = other.sign(GO_TEXT).unwrap();
        let line = extra_sig.rsplit_once("\n\n").unwrap().1;
        let both = format!("{GO_NOTE}{line}");
        assert_eq!(verifier.open(&both).unwrap(), GO_TEXT);
        assert_eq!(other.verifier().open(&both).unwrap(), GO_TEXT);
        for bad in [
            "no blank line\n",
            "text\n\n",
            "text\n\nnot a signature\n",
            "text\n\n— PeterNeumann !!!\n",
            "text\n\n— PeterNeumann AAAA\n",
            "text\n\n— PeterNeumann x08go/ZJ",
            "text\n\n— Peter+Neumann AAAAAAAA\n",
        ] {
            assert!(
                matches!(verifier.open(bad), Err(TlogError::MalformedNote { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_keys_and_texts() {
        for bad in [
            "",
            "PeterNeumann",
            "PeterNeumann+c74f20a3",
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+AhpcQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy1",
        ] {
            assert!(
                matches!(
                    NoteVerifier::from_text(bad),
                    Err(TlogError::InvalidKey { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(NoteSigner::from_text(GO_VKEY).is_err());
        assert!(NoteSigner::from_text(&GO_SKEY.replace("c74f20a3", "c74f20a4")).is_err());
        assert!(NoteSigner::generate("a b").is_err());
        assert!(NoteSigner::generate("").is_err());
        let s = NoteSigner::generate("log.example/audit").unwrap();
        for bad in ["", "no newline", "a\n\nb\n", "\nx\n"] {
            assert!(
                matches!(s.sign(bad), Err(TlogError::MalformedNote { .. })),
                "{bad:?}"
            );
        }
        // A generated key round-trips through its text and signs verifiably.
        let again = NoteSigner::from_text(&s.to_secret_text()).unwrap();
        let note = again.sign("hello\n").unwrap();
        let v = NoteVerifier::from_text(&s.verifier().to_string()).unwrap();
        assert_eq!(v.open(&note).unwrap(), "hello\n");
        assert_ne!(
            NoteSigner::generate("x").unwrap().verifier(),
            NoteSigner::generate("x").unwrap().verifier()
        );
    }
}
