//! Idempotency keys: parsing client keys, deriving keys from request data,
//! and hashing everything into an injective [`StorageKey`].
//!
//! A raw client key never leaves this module in clear text: [`IdempotencyKey`]
//! redacts itself in `Debug`, has no `Display`, and the only thing a store,
//! a log line or an audit row ever sees is the SHA-256 [`StorageKey`] (or its
//! [`short`](StorageKey::short) form).

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest accepted `Idempotency-Key` value, in characters (bytes: only ASCII is accepted).
pub const MAX_KEY_LEN: usize = 255;

/// Why a client-supplied idempotency key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The value is empty (or an empty sf-string `""`).
    #[error("idempotency key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("idempotency key is {len} characters long; at most {max} are allowed", max = MAX_KEY_LEN)]
    TooLong {
        /// Length of the rejected key.
        len: usize,
    },
    /// The key contains a character outside printable ASCII (0x20..=0x7E).
    #[error("idempotency key contains a character outside printable ASCII at byte {position}")]
    InvalidCharacter {
        /// Byte offset of the first offending character.
        position: usize,
    },
    /// A quoted sf-string is not terminated, has trailing data, or uses an invalid escape.
    #[error("idempotency key is a malformed structured-field string: {reason}")]
    MalformedString {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A derived key could not be built from the request (a field is missing, ...).
    #[error("idempotency key could not be derived: {reason}")]
    Underivable {
        /// What was missing.
        reason: String,
    },
    /// A key derived from a JSON body: an object in the body has a member
    /// name twice (compared unescaped), so which value counts is ambiguous.
    #[error(
        "idempotency key could not be derived: the JSON body has the member {pointer} more than once"
    )]
    DuplicateKey {
        /// JSON pointer (RFC 6901) of the repeated member.
        pointer: String,
    },
}

/// A validated client idempotency key.
///
/// Accepts the RFC 8941 sf-string form (`"abc"`, with `\"` and `\\` escapes)
/// and the bare form (`abc`); both denote the same key. The key must be
/// 1..=255 printable ASCII characters.
///
/// The value is deliberately opaque: `Debug` prints only a short hash and there
/// is no `Display`. Use [`IdempotencyKey::short_hash`] in logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Builds a key from a string a client chose (already unquoted: HTTP
    /// header syntax, such as the RFC 8941 sf-string form of
    /// `Idempotency-Key`, is read by the HTTP layer, `idempotency-tower`).
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the value is empty, longer than [`MAX_KEY_LEN`] or
    /// holds a character outside printable ASCII.
    ///
    /// ```
    /// use idempotency_core::IdempotencyKey;
    /// assert!(IdempotencyKey::new("8e03978e-40d5").is_ok());
    /// assert!(IdempotencyKey::new("").is_err());
    /// ```
    pub fn new(value: impl Into<String>) -> Result<Self, KeyError> {
        let value = value.into();
        if value.is_empty() {
            return Err(KeyError::Empty);
        }
        Self::validate(value.as_bytes(), 0)?;
        Ok(Self(value))
    }

    /// Builds a key from bytes a client chose (already unquoted), with the
    /// rules of [`new`](Self::new).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_bytes(value: &[u8]) -> Result<Self, KeyError> {
        if value.is_empty() {
            return Err(KeyError::Empty);
        }
        Self::validate(value, 0)?;
        // Validation guarantees ASCII.
        Ok(Self(String::from_utf8_lossy(value).into_owned()))
    }

    fn validate(bytes: &[u8], offset: usize) -> Result<(), KeyError> {
        if let Some(position) = bytes.iter().position(|b| !(0x20..=0x7e).contains(b)) {
            return Err(KeyError::InvalidCharacter {
                position: position + offset,
            });
        }
        if bytes.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { len: bytes.len() });
        }
        Ok(())
    }

    /// The key's bytes, for hashing into a [`StorageKey`]. Never log them.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// A short, non-reversible identifier for logs: the first 12 hex digits of SHA-256 of the key.
    pub fn short_hash(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex(&digest[..6])
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey")
            .field(&format_args!("sha256:{}", self.short_hash()))
            .finish()
    }
}

/// The identity of an idempotency record in a store: SHA-256 over
/// length-prefixed segments.
///
/// Each segment is written as its length (8 bytes, big endian) followed by
/// its bytes, after a domain tag and the segment count, so the encoding is
/// injective: `["a:b", "c"]` and `["a", "b:c"]` never hash alike.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey([u8; 32]);

/// The first material segment of a client key.
const CLIENT_MATERIAL: &[u8] = b"client";
/// The first material segment of derived material.
const DERIVED_MATERIAL: &[u8] = b"derived";

impl StorageKey {
    /// Hashes an ordered list of segments.
    ///
    /// ```
    /// use idempotency_core::StorageKey;
    /// let a = StorageKey::from_segments(&[b"a:b".as_slice(), b"c"]);
    /// let b = StorageKey::from_segments(&[b"a".as_slice(), b"b:c"]);
    /// assert_ne!(a, b);
    /// ```
    pub fn from_segments<S: AsRef<[u8]>>(segments: &[S]) -> Self {
        Self::hash_segments(segments.len(), segments.iter().map(AsRef::as_ref))
    }

    /// The key of a client key: the same as
    /// `KeySpec::new(namespace).scope(scope).client_key(key).storage_key()`,
    /// without building the spec (no allocation).
    ///
    /// ```
    /// use idempotency_core::{IdempotencyKey, KeySpec, StorageKey};
    /// let key = IdempotencyKey::new("8e03978e-40d5").unwrap();
    /// assert_eq!(
    ///     StorageKey::for_client_key(b"orders", b"tenant-a", &key),
    ///     KeySpec::new("orders").scope("tenant-a").client_key(&key).storage_key(),
    /// );
    /// ```
    pub fn for_client_key(namespace: &[u8], scope: &[u8], key: &IdempotencyKey) -> Self {
        let segments: [&[u8]; 6] = [
            namespace,
            scope,
            &[],
            &[],
            CLIENT_MATERIAL,
            key.expose_secret(),
        ];
        Self::hash_segments(segments.len(), segments.into_iter())
    }

    /// The key of derived material: the same as
    /// `KeySpec::new(namespace).scope(scope).method(method).route(route).derived(parts).storage_key()`,
    /// without building the spec (no allocation).
    ///
    /// ```
    /// use idempotency_core::{KeySpec, StorageKey};
    /// assert_eq!(
    ///     StorageKey::for_derived(b"promotion", b"", b"POST", b"/estimates/{id}/promote", &["E-1", "3"]),
    ///     KeySpec::new("promotion")
    ///         .method("POST")
    ///         .route("/estimates/{id}/promote")
    ///         .derived(["E-1", "3"])
    ///         .storage_key(),
    /// );
    /// ```
    pub fn for_derived<S: AsRef<[u8]>>(
        namespace: &[u8],
        scope: &[u8],
        method: &[u8],
        route: &[u8],
        parts: &[S],
    ) -> Self {
        let head: [&[u8]; 5] = [namespace, scope, method, route, DERIVED_MATERIAL];
        Self::hash_segments(
            head.len() + parts.len(),
            head.into_iter().chain(parts.iter().map(AsRef::as_ref)),
        )
    }

    /// SHA-256 over the domain tag, the segment count and each segment,
    /// length first.
    fn hash_segments<'a>(count: usize, segments: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut h = Sha256::new();
        h.update(b"idempotency-rs/storage-key/v1");
        h.update((count as u64).to_be_bytes());
        let mut written = 0usize;
        for s in segments {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s);
            written += 1;
        }
        debug_assert_eq!(written, count, "segment count");
        Self(h.finalize().into())
    }

    /// Wraps 32 bytes read back from a store.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex of all 32 bytes (64 characters).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the 64-character hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = unhex(s)?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// First 12 hex digits, for log lines and metrics exemplars.
    pub fn short(&self) -> String {
        hex(&self.0[..6])
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageKey({})", self.short())
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The parts that identify one idempotent operation, hashed into a [`StorageKey`].
///
/// Two requests share a record only when every part is equal: the same
/// namespace (application or operation family), the same scope (tenant,
/// principal), the same method and route template, and the same key material
/// (a client key, or material derived from the request).
///
/// ```
/// use idempotency_core::{IdempotencyKey, KeySpec};
/// let key = IdempotencyKey::new("order-42").unwrap();
/// let alice = KeySpec::new("shop")
///     .scope("tenant-1/alice")
///     .method("POST")
///     .route("/orders")
///     .client_key(&key)
///     .storage_key();
/// let bob = KeySpec::new("shop")
///     .scope("tenant-1/bob")
///     .method("POST")
///     .route("/orders")
///     .client_key(&key)
///     .storage_key();
/// assert_ne!(alice, bob);
/// ```
#[derive(Clone, Default)]
pub struct KeySpec {
    namespace: Vec<u8>,
    scope: Vec<u8>,
    method: Vec<u8>,
    route: Vec<u8>,
    material: Vec<Vec<u8>>,
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySpec")
            .field("namespace", &String::from_utf8_lossy(&self.namespace))
            .field("method", &String::from_utf8_lossy(&self.method))
            .field("route", &String::from_utf8_lossy(&self.route))
            .field("storage_key", &self.storage_key())
            .finish_non_exhaustive()
    }
}

impl KeySpec {
    /// Starts a spec in a namespace.
    pub fn new(namespace: impl AsRef<[u8]>) -> Self {
        Self {
            namespace: namespace.as_ref().to_vec(),
            ..Self::default()
        }
    }

    /// Sets the scope (tenant, principal...). Records in different scopes never meet.
    #[must_use]
    pub fn scope(mut self, scope: impl AsRef<[u8]>) -> Self {
        self.scope = scope.as_ref().to_vec();
        self
    }

    /// Sets the method (`POST`, or an operation name for non-HTTP use).
    #[must_use]
    pub fn method(mut self, method: impl AsRef<[u8]>) -> Self {
        self.method = method.as_ref().to_vec();
        self
    }

    /// Sets the route template (`/orders/{id}`), not the concrete path.
    #[must_use]
    pub fn route(mut self, route: impl AsRef<[u8]>) -> Self {
        self.route = route.as_ref().to_vec();
        self
    }

    /// Uses a validated client key as the key material.
    #[must_use]
    pub fn client_key(self, key: &IdempotencyKey) -> Self {
        self.material([CLIENT_MATERIAL, key.expose_secret()])
    }

    /// Uses derived material (one segment per value) as the key material,
    /// e.g. `[estimate_id, snapshot_version]`.
    #[must_use]
    pub fn derived<I, S>(self, parts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut out = vec![DERIVED_MATERIAL.to_vec()];
        out.extend(parts.into_iter().map(|p| p.as_ref().to_vec()));
        self.material_vec(out)
    }

    fn material<const N: usize>(self, parts: [&[u8]; N]) -> Self {
        self.material_vec(parts.iter().map(|p| p.to_vec()).collect())
    }

    fn material_vec(mut self, parts: Vec<Vec<u8>>) -> Self {
        self.material = parts;
        self
    }

    /// Hashes the spec.
    pub fn storage_key(&self) -> StorageKey {
        let head: [&[u8]; 4] = [&self.namespace, &self.scope, &self.method, &self.route];
        StorageKey::hash_segments(
            head.len() + self.material.len(),
            head.into_iter()
                .chain(self.material.iter().map(Vec::as_slice)),
        )
    }
}

/// Extracts key material from a JSON document by JSON pointers (RFC 6901).
///
/// Each pointer must resolve to a string, number or boolean; strings are
/// taken as their text, other scalars as their canonical JSON text, with a
/// one-byte type tag so that `"1"` and `1` stay distinct.
///
/// ```
/// use idempotency_core::{derive_from_json, KeySpec};
/// let body = br#"{"estimateId":"E-1","snapshotVersion":3,"note":"x"}"#;
/// let parts = derive_from_json(body, &["/estimateId", "/snapshotVersion"]).unwrap();
/// let key = KeySpec::new("promotion").derived(&parts).storage_key();
/// let again = derive_from_json(br#"{"snapshotVersion":3,"estimateId":"E-1"}"#, &["/estimateId", "/snapshotVersion"]).unwrap();
/// assert_eq!(key, KeySpec::new("promotion").derived(&again).storage_key());
/// ```
///
/// A body whose objects repeat a member name, at any depth, is refused
/// (`serde_json` alone would keep the last one, so `{"id":"a","id":"b"}`
/// would derive the key of `{"id":"b"}`):
///
/// ```
/// use idempotency_core::{derive_from_json, KeyError};
/// let twice = derive_from_json(br#"{"estimateId":"E-9","estimateId":"E-1"}"#, &["/estimateId"]);
/// assert_eq!(twice, Err(KeyError::DuplicateKey { pointer: "/estimateId".into() }));
/// ```
///
/// # Errors
///
/// [`KeyError::Underivable`] when the body is not JSON, a pointer is missing,
/// or it points at `null`, an object or an array; [`KeyError::DuplicateKey`]
/// when the body repeats a member name.
pub fn derive_from_json(body: &[u8], pointers: &[&str]) -> Result<Vec<Vec<u8>>, KeyError> {
    let value = crate::fingerprint::parse_json_strict(body).map_err(|e| match e {
        crate::fingerprint::NotCanonical::NotJson(e) => KeyError::Underivable {
            reason: format!("body is not JSON: {e}"),
        },
        crate::fingerprint::NotCanonical::DuplicateKey(pointer) => {
            KeyError::DuplicateKey { pointer }
        }
    })?;
    derive_from_value(&value, pointers)
}

/// Like [`derive_from_json`], over an already-parsed value.
///
/// # Errors
///
/// [`KeyError::Underivable`] as for [`derive_from_json`].
pub fn derive_from_value(
    value: &serde_json::Value,
    pointers: &[&str],
) -> Result<Vec<Vec<u8>>, KeyError> {
    pointers
        .iter()
        .map(|p| {
            let v = value.pointer(p).ok_or_else(|| KeyError::Underivable {
                reason: format!("field {p} is missing"),
            })?;
            let mut out = Vec::new();
            match v {
                serde_json::Value::String(s) => {
                    out.push(b's');
                    out.extend_from_slice(s.as_bytes());
                }
                serde_json::Value::Number(n) => {
                    out.push(b'n');
                    out.extend_from_slice(n.to_string().as_bytes());
                }
                serde_json::Value::Bool(b) => {
                    out.push(b'b');
                    out.push(u8::from(*b));
                }
                _ => {
                    return Err(KeyError::Underivable {
                        reason: format!("field {p} is not a string, number or boolean"),
                    });
                }
            }
            Ok(out)
        })
        .collect()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

/// A map keyed by [`StorageKey`], hashed by [`KeyHashBuilder`].
pub(crate) type KeyMap<V> = std::collections::HashMap<StorageKey, V, KeyHashBuilder>;

/// The hasher of the maps keyed by [`StorageKey`] (the memory store's
/// records, waiters, the replay cache). A storage key is a SHA-256 digest,
/// so its bytes are already uniformly spread; SipHash (the standard map's
/// default) would hash them again at several times the cost. This folds the
/// key's words into a state with 64 × 64 → 128-bit multiplications by a
/// secret random seed, drawn per map: a client grinding inputs to make keys
/// collide cannot know where a key lands.
#[derive(Clone)]
pub(crate) struct KeyHashBuilder {
    seed: [u64; 2],
}

impl Default for KeyHashBuilder {
    fn default() -> Self {
        use std::hash::{BuildHasher as _, Hasher as _};
        // The standard library's per-process random keys, stepped per call.
        let state = std::collections::hash_map::RandomState::new();
        let draw = |n: u64| {
            let mut h = state.build_hasher();
            h.write_u64(n);
            h.finish()
        };
        // An odd multiplier never maps a non-zero state to zero by itself.
        Self {
            seed: [draw(0), draw(1) | 1],
        }
    }
}

impl std::hash::BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            acc: self.seed[0],
            mul: self.seed[1],
        }
    }
}

/// See [`KeyHashBuilder`].
pub(crate) struct KeyHasher {
    acc: u64,
    mul: u64,
}

impl KeyHasher {
    fn fold(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        // Truncations are the point: the low and the high half of the product.
        #[allow(clippy::cast_possible_truncation)]
        let (lo, hi) = (p as u64, (p >> 64) as u64);
        lo ^ hi
    }

    fn mix(&mut self, word: u64) {
        self.acc = Self::fold(self.acc ^ word, self.mul);
    }
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.mix(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            // The length tells `ab` from `ab\0`.
            self.mix(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        Self::fold(self.acc, self.mul.rotate_left(32) | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(IdempotencyKey::new(""), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::from_bytes(b""), Err(KeyError::Empty));
        assert!(IdempotencyKey::new("k".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::from_bytes("k".repeat(256).as_bytes()),
            Err(KeyError::TooLong { len: 256 })
        );
        assert!(IdempotencyKey::from_bytes(&vec![b'a'; 1 << 20]).is_err());
        assert_eq!(
            IdempotencyKey::from_bytes(b"ab\x01c"),
            Err(KeyError::InvalidCharacter { position: 2 })
        );
        assert!(matches!(
            IdempotencyKey::new("clé"),
            Err(KeyError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            IdempotencyKey::new("tab\tinside"),
            Err(KeyError::InvalidCharacter { position: 3 })
        ));
        // Quotes have no meaning here: header syntax belongs to the HTTP layer.
        assert_eq!(
            IdempotencyKey::new("\"abc\"").unwrap().expose_secret(),
            b"\"abc\""
        );
    }

    #[test]
    fn debug_never_shows_the_raw_key() {
        let k = IdempotencyKey::new("super-secret-key").unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("super-secret-key"), "{dbg}");
        assert!(dbg.contains(&k.short_hash()));
        assert_eq!(k.short_hash().len(), 12);
    }

    #[test]
    fn segments_are_injective() {
        let cases: &[&[&[u8]]] = &[
            &[b"a:b", b"c"],
            &[b"a", b"b:c"],
            &[b"ab", b"c"],
            &[b"a", b"bc"],
            &[b"abc"],
            &[b"abc", b""],
            &[b"", b"abc"],
            &[],
            &[b""],
            &[b"", b""],
        ];
        let keys: Vec<_> = cases.iter().map(|c| StorageKey::from_segments(c)).collect();
        for i in 0..keys.len() {
            for j in 0..keys.len() {
                assert_eq!(
                    i == j,
                    keys[i] == keys[j],
                    "{:?} vs {:?}",
                    cases[i],
                    cases[j]
                );
            }
        }
    }

    #[test]
    fn spec_parts_never_bleed_into_each_other() {
        let k = IdempotencyKey::new("k").unwrap();
        let a = KeySpec::new("ns").scope("ab").method("POST").client_key(&k);
        let b = KeySpec::new("nsa").scope("b").method("POST").client_key(&k);
        assert_ne!(a.storage_key(), b.storage_key());
        let c = KeySpec::new("ns").route("/a").client_key(&k);
        let d = KeySpec::new("ns").route("/b").client_key(&k);
        assert_ne!(c.storage_key(), d.storage_key());
        // A derived key never equals a client key with the same text.
        let e = KeySpec::new("ns").derived(["k"]);
        assert_ne!(
            e.storage_key(),
            KeySpec::new("ns").client_key(&k).storage_key()
        );
    }

    #[test]
    fn storage_keys_never_change() {
        // Records written by any version must be found by every later one:
        // these digests were computed outside this crate (SHA-256 of the
        // tag, the segment count and each length-prefixed segment).
        let key = IdempotencyKey::new("8e03978e-40d5").unwrap();
        let client = "febf274c52944c9e1d12f089d735d75f02cbcc4d5f1a4fcaf747605fa8599171";
        assert_eq!(
            StorageKey::for_client_key(b"orders", b"tenant-a", &key).to_hex(),
            client
        );
        let spec = KeySpec::new("orders").scope("tenant-a").client_key(&key);
        assert_eq!(spec.storage_key().to_hex(), client);
        let derived = "5ec64aadb72cf71fda22b5ba7584195ac003022a31d4edb1dda3ce3f53693920";
        let route = b"/estimates/{id}/promote";
        assert_eq!(
            StorageKey::for_derived(b"promotion", b"", b"POST", route, &["E-1", "3"]).to_hex(),
            derived
        );
        let spec = KeySpec::new("promotion")
            .method("POST")
            .route(route)
            .derived(["E-1", "3"]);
        assert_eq!(spec.storage_key().to_hex(), derived);
    }

    #[test]
    fn the_direct_keys_are_the_specs_keys() {
        let keys = ["k", "8e03978e-40d5", "a b ~/\\\"", &"x".repeat(255)];
        let scopes: [&[u8]; 3] = [b"", b"tenant-a", b"\x00\xff"];
        for text in keys {
            let key = IdempotencyKey::new(text).unwrap();
            for scope in scopes {
                assert_eq!(
                    StorageKey::for_client_key(b"ns", scope, &key),
                    KeySpec::new("ns")
                        .scope(scope)
                        .client_key(&key)
                        .storage_key()
                );
                for parts in [vec![], vec![text], vec![text, "", text]] {
                    assert_eq!(
                        StorageKey::for_derived(b"ns", scope, b"PUT", b"/r/{id}", &parts),
                        KeySpec::new("ns")
                            .scope(scope)
                            .method("PUT")
                            .route("/r/{id}")
                            .derived(&parts)
                            .storage_key()
                    );
                }
            }
        }
    }

    #[test]
    fn hex_round_trip() {
        let k = StorageKey::from_segments(&[b"x"]);
        assert_eq!(StorageKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(StorageKey::from_hex("zz"), None);
        assert_eq!(k.to_string().len(), 64);
    }

    #[test]
    fn derived_keys_refuse_repeated_member_names() {
        // Last-wins would derive the key of `{"id":"b"}` from this body.
        let expected = |p: &str| Err(KeyError::DuplicateKey { pointer: p.into() });
        assert_eq!(
            derive_from_json(br#"{"id":"a","id":"b"}"#, &["/id"]),
            expected("/id")
        );
        assert_eq!(
            derive_from_json(br#"{"id":"a","\u0069d":"a"}"#, &["/id"]),
            expected("/id")
        );
        // Anywhere in the body, not only on the way to a pointer.
        assert_eq!(
            derive_from_json(br#"{"id":"a","meta":{"t":1,"t":2}}"#, &["/id"]),
            expected("/meta/t")
        );
        assert_eq!(
            derive_from_json(br#"{"id":"a","l":[{"q":1},{"q":1,"q":1}]}"#, &["/id"]),
            expected("/l/1/q")
        );
        assert!(derive_from_json(br#"{"id":"a","l":[{"q":1},{"q":1}]}"#, &["/id"]).is_ok());
    }

    #[test]
    fn derived_from_json_fields() {
        let a = derive_from_json(br#"{"id":"1","v":2}"#, &["/id", "/v"]).unwrap();
        let b = derive_from_json(br#"{"id":1,"v":2}"#, &["/id", "/v"]).unwrap();
        assert_ne!(a, b, "string \"1\" and number 1 differ");
        assert!(matches!(
            derive_from_json(br#"{"id":"1"}"#, &["/id", "/v"]),
            Err(KeyError::Underivable { .. })
        ));
        assert!(matches!(
            derive_from_json(b"not json", &["/id"]),
            Err(KeyError::Underivable { .. })
        ));
        assert!(matches!(
            derive_from_json(br#"{"id":{"a":1}}"#, &["/id"]),
            Err(KeyError::Underivable { .. })
        ));
        let nested = derive_from_json(br#"{"a":{"b":true}}"#, &["/a/b"]).unwrap();
        assert_eq!(nested, vec![b"b\x01".to_vec()]);
    }

    fn spread(keys: &[StorageKey], buckets: usize) -> usize {
        use std::hash::BuildHasher as _;
        let b = KeyHashBuilder::default();
        let mut counts = vec![0usize; buckets];
        for k in keys {
            // The low bits, as a hash table's index uses them.
            #[allow(clippy::cast_possible_truncation)]
            let i = (b.hash_one(k) as usize) & (buckets - 1);
            counts[i] += 1;
        }
        counts.into_iter().max().unwrap_or(0)
    }

    #[test]
    fn the_key_hasher_is_stable_per_map_and_seeded_per_map() {
        use std::hash::BuildHasher as _;
        let keys: Vec<StorageKey> = (0u32..64)
            .map(|i| StorageKey::from_segments(&[i.to_le_bytes()]))
            .collect();
        let (a, b) = (KeyHashBuilder::default(), KeyHashBuilder::default());
        for k in &keys {
            assert_eq!(a.hash_one(k), a.clone().hash_one(k));
        }
        let differ = keys
            .iter()
            .filter(|k| a.hash_one(k) != b.hash_one(k))
            .count();
        assert!(
            differ > 60,
            "two maps place keys alike: {differ} of 64 differ"
        );
    }

    #[test]
    fn the_key_hasher_spreads_digests_and_crafted_keys() {
        // 10,000 keys in 1,024 buckets: about 10 each.
        let digests: Vec<StorageKey> = (0u32..10_000)
            .map(|i| StorageKey::from_segments(&[i.to_le_bytes()]))
            .collect();
        assert!(spread(&digests, 1024) < 40);
        // Keys alike but for one word (what grinding for a shared prefix or
        // suffix gives): still spread.
        for word in 0..4 {
            let crafted: Vec<StorageKey> = (0u64..10_000)
                .map(|i| {
                    let mut b = [0x5au8; 32];
                    b[word * 8..word * 8 + 8].copy_from_slice(&(i << 20).to_le_bytes());
                    StorageKey(b)
                })
                .collect();
            assert!(spread(&crafted, 1024) < 40, "word {word}");
        }
    }
}
