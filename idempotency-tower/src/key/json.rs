//! [`JsonFields`]: keys derived from fields of a JSON body.

use idempotency_core::derive_from_json;

use super::{KeyInput, KeyMaterial, KeyRejection, KeySource};

/// A key derived from JSON body fields given as JSON pointers (RFC 6901),
/// e.g. `JsonFields::new(["/estimateId", "/snapshotVersion"])`.
///
/// A missing field, a non-scalar field or a body that is not JSON is a
/// `key-invalid` rejection.
#[derive(Debug, Clone)]
pub struct JsonFields {
    pointers: Vec<String>,
}

impl JsonFields {
    /// The pointers, in order.
    pub fn new<I, S>(pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            pointers: pointers.into_iter().map(Into::into).collect(),
        }
    }
}

impl KeySource for JsonFields {
    fn extract(&self, input: &KeyInput<'_>) -> Result<Option<KeyMaterial>, KeyRejection> {
        let pointers: Vec<&str> = self.pointers.iter().map(String::as_str).collect();
        let parts = derive_from_json(input.body.unwrap_or_default(), &pointers)?;
        Ok(Some(KeyMaterial::Derived(parts)))
    }
}
