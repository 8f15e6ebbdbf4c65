//! The inbox: process each message once per `(consumer, message id)`,
//! optionally in version order per aggregate, committed together with the
//! handler's effects.
//!
//! | module | step |
//! |---|---|
//! | `message` | what a delivery is: [`InboxMessage`] |
//! | `store` | the store's decision and contract: [`Admission`], [`InboxStore`] |
//! | `runner` | one delivery, end to end: [`Inbox::process`] → [`Delivery`] |
//! | `memory` | the in-process store: [`MemoryInbox`] |

mod memory;
mod message;
mod runner;
mod store;

pub use memory::{MemoryInbox, MemoryInboxTx};
pub use message::{InboxMessage, MAX_INBOX_ID_LEN, MAX_VERSION, MessageError};
pub use runner::{Delivery, HandlerFuture, INBOX_MESSAGES_TOTAL, Inbox, InboxError};
pub use store::{Admission, Disposition, InboxStore};
