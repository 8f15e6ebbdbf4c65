//! What the inbox is told about a delivery: [`InboxMessage`].

/// Longest consumer name, message id or aggregate id, in bytes.
pub const MAX_INBOX_ID_LEN: usize = 255;

/// Highest version an ordered message may carry (stores keep versions as
/// signed 64-bit integers).
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// One delivery of a message to one consumer, as the inbox sees it.
///
/// The inbox processes a message once per `(consumer, message id)`: the id is
/// the one the producer gave the message (an event id), never one the broker
/// gave this delivery. With [`InboxMessage::ordered`] the message also
/// carries the aggregate it belongs to and its version there, and the inbox
/// applies the versions of one aggregate in order (see [`Admission`](crate::Admission)).
///
/// ```
/// use idempotency_core::InboxMessage;
///
/// let msg = InboxMessage::new("work-execution", "7f0c9a5e-2f1b-4d8e-9c43-1c1f0e7d9a10")
///     .unwrap()
///     .ordered("appointment-42", 2)
///     .unwrap();
/// assert_eq!(msg.version(), Some(2));
/// assert!(InboxMessage::new("work-execution", "").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboxMessage {
    consumer: Box<str>,
    message_id: Box<str>,
    order: Option<(Box<str>, u64)>,
}

/// Why an [`InboxMessage`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A consumer name, message id or aggregate id is empty, longer than
    /// [`MAX_INBOX_ID_LEN`] bytes, or holds a control character.
    #[error("invalid {field}: {reason}")]
    InvalidId {
        /// Which part: `consumer`, `message id` or `aggregate`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A version of 0 or above [`MAX_VERSION`]: versions start at 1.
    #[error("invalid version {0}: versions are 1..={MAX_VERSION}")]
    InvalidVersion(u64),
}

fn check(field: &'static str, value: &str) -> Result<Box<str>, MessageError> {
    let reason = if value.is_empty() {
        "empty"
    } else if value.len() > MAX_INBOX_ID_LEN {
        "longer than 255 bytes"
    } else if value.chars().any(char::is_control) {
        "holds a control character"
    } else {
        return Ok(value.into());
    };
    Err(MessageError::InvalidId { field, reason })
}

impl InboxMessage {
    /// A message `message_id` delivered to `consumer`, without ordering.
    ///
    /// # Errors
    ///
    /// [`MessageError::InvalidId`] when either is empty, longer than
    /// [`MAX_INBOX_ID_LEN`] bytes or holds a control character.
    pub fn new(consumer: &str, message_id: &str) -> Result<Self, MessageError> {
        Ok(Self {
            consumer: check("consumer", consumer)?,
            message_id: check("message id", message_id)?,
            order: None,
        })
    }

    /// The same message, applied in version order within `aggregate`.
    ///
    /// # Errors
    ///
    /// [`MessageError::InvalidId`] for a bad aggregate id,
    /// [`MessageError::InvalidVersion`] for 0 or a version above [`MAX_VERSION`].
    pub fn ordered(mut self, aggregate: &str, version: u64) -> Result<Self, MessageError> {
        if version == 0 || version > MAX_VERSION {
            return Err(MessageError::InvalidVersion(version));
        }
        self.order = Some((check("aggregate", aggregate)?, version));
        Ok(self)
    }

    /// The consumer.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The producer's message id.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The aggregate, for an ordered message.
    pub fn aggregate(&self) -> Option<&str> {
        self.order.as_ref().map(|(a, _)| &**a)
    }

    /// The version within the aggregate, for an ordered message.
    pub fn version(&self) -> Option<u64> {
        self.order.as_ref().map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_printable() {
        assert!(InboxMessage::new("c", "m").is_ok());
        assert!(InboxMessage::new("c", &"x".repeat(255)).is_ok());
        for (consumer, id, field, reason) in [
            ("", "m", "consumer", "empty"),
            ("c", "", "message id", "empty"),
            (
                "c",
                &"x".repeat(256)[..],
                "message id",
                "longer than 255 bytes",
            ),
            ("c\n", "m", "consumer", "holds a control character"),
            ("c", "m\u{0}", "message id", "holds a control character"),
        ] {
            assert_eq!(
                InboxMessage::new(consumer, id),
                Err(MessageError::InvalidId { field, reason }),
                "{consumer:?} {id:?}"
            );
        }
    }

    #[test]
    fn versions_start_at_one_and_fit_a_bigint() {
        let msg = InboxMessage::new("c", "m").unwrap();
        assert_eq!(
            msg.clone().ordered("a", 0),
            Err(MessageError::InvalidVersion(0))
        );
        assert_eq!(
            msg.clone().ordered("a", MAX_VERSION + 1),
            Err(MessageError::InvalidVersion(MAX_VERSION + 1))
        );
        let ordered = msg.clone().ordered("a", MAX_VERSION).unwrap();
        assert_eq!(ordered.aggregate(), Some("a"));
        assert_eq!(ordered.version(), Some(MAX_VERSION));
        assert_eq!(msg.aggregate(), None);
        assert!(matches!(
            msg.ordered("", 1),
            Err(MessageError::InvalidId {
                field: "aggregate",
                ..
            })
        ));
    }
}
