//! The in-process inbox store: [`MemoryInbox`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::message::InboxMessage;
use super::store::{Admission, Disposition, InboxStore};
use crate::store::StoreError;

type Pair = (Box<str>, Box<str>);

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Pair, Disposition>,
    versions: HashMap<Pair, u64>,
}

/// An [`InboxStore`] in memory, for one process and for tests.
///
/// A transaction holds the whole inbox exclusively until it commits or is
/// dropped, so deliveries are processed one at a time; entries are kept for
/// the life of the value. Its transactions cover only the inbox itself:
/// handler effects outside it do not roll back with it. Effects in a
/// database belong with that database's inbox store
/// (`idempotency_postgres::PostgresInbox`).
#[derive(Debug, Clone, Default)]
pub struct MemoryInbox {
    state: Arc<Mutex<State>>,
}

/// A [`MemoryInbox`] transaction: writes are staged and applied on commit.
#[derive(Debug)]
pub struct MemoryInboxTx {
    state: OwnedMutexGuard<State>,
    entries: Vec<(Pair, Disposition)>,
    versions: Vec<(Pair, u64)>,
}

fn pair(a: &str, b: &str) -> Pair {
    (a.into(), b.into())
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }
}

impl MemoryInboxTx {
    fn seen(&self, key: &Pair) -> bool {
        self.state.entries.contains_key(key) || self.entries.iter().any(|(k, _)| k == key)
    }

    fn last(&self, key: &Pair) -> u64 {
        self.versions
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .or_else(|| self.state.versions.get(key).copied())
            .unwrap_or(0)
    }
}

impl InboxStore for MemoryInbox {
    type Tx = MemoryInboxTx;

    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send {
        let state = Arc::clone(&self.state);
        async move {
            Ok(MemoryInboxTx {
                state: state.lock_owned().await,
                entries: Vec::new(),
                versions: Vec::new(),
            })
        }
    }

    fn admit(
        &self,
        tx: &mut Self::Tx,
        msg: &InboxMessage,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send {
        let entry = pair(msg.consumer(), msg.message_id());
        let aggregate = msg.aggregate().map(|a| pair(msg.consumer(), a));
        let last = aggregate.as_ref().map_or(0, |a| tx.last(a));
        let admission = Admission::decide(tx.seen(&entry), msg.version(), last);
        match admission {
            Admission::Apply => {
                tx.entries.push((entry, Disposition::Applied));
                if let (Some(a), Some(v)) = (aggregate, msg.version()) {
                    tx.versions.push((a, v));
                }
            }
            Admission::Stale { .. } => tx.entries.push((entry, Disposition::Stale)),
            Admission::Duplicate | Admission::OutOfOrder { .. } => {}
        }
        std::future::ready(Ok(admission))
    }

    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<(), StoreError>> + Send {
        let MemoryInboxTx {
            mut state,
            entries,
            versions,
        } = tx;
        state.entries.extend(entries);
        state.versions.extend(versions);
        std::future::ready(Ok(()))
    }

    fn entry(
        &self,
        consumer: &str,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<Disposition>, StoreError>> + Send {
        let key = pair(consumer, message_id);
        let state = Arc::clone(&self.state);
        async move { Ok(state.lock().await.entries.get(&key).copied()) }
    }

    fn last_version(
        &self,
        consumer: &str,
        aggregate: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        let key = pair(consumer, aggregate);
        let state = Arc::clone(&self.state);
        async move { Ok(state.lock().await.versions.get(&key).copied()) }
    }
}
