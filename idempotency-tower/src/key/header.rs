//! [`HeaderKey`]: the client's key from a header (`Idempotency-Key`).

use http::HeaderName;
use idempotency_core::IdempotencyKey;

use super::{KeyInput, KeyMaterial, KeyRejection, KeySource};
use crate::config::IDEMPOTENCY_KEY;

/// The key from a header: `Idempotency-Key` by default, as an RFC 8941
/// sf-string (`"abc"`) or bare (`abc`) — both forms are the same key.
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// The `Idempotency-Key` header.
    pub fn new() -> Self {
        Self {
            name: IDEMPOTENCY_KEY,
        }
    }

    /// Another header.
    pub fn named(name: HeaderName) -> Self {
        Self { name }
    }
}

impl Default for HeaderKey {
    fn default() -> Self {
        Self::new()
    }
}

impl KeySource for HeaderKey {
    fn reads_body(&self) -> bool {
        false
    }

    fn header(&self) -> Option<&HeaderName> {
        Some(&self.name)
    }

    fn extract(&self, input: &KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection> {
        let mut values = input.parts.headers.get_all(&self.name).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyRejection::Duplicated {
                header: self.name.clone(),
            });
        }
        Ok(Some(KeyMaterial::Client(IdempotencyKey::parse(
            value.as_bytes(),
        )?)))
    }
}
