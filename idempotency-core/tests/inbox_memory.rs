//! The inbox conformance suite on [`MemoryInbox`], and the inbox's metrics.

use idempotency_core::{
    Delivery, HandlerFuture, INBOX_MESSAGES_TOTAL, Inbox, InboxMessage, MemoryInbox, MemoryInboxTx,
};

idempotency_core::inbox_conformance_tests!(async { Some(MemoryInbox::new()) });

fn ok(_: &mut MemoryInboxTx) -> HandlerFuture<'_, (), std::io::Error> {
    Box::pin(async { Ok(()) })
}

/// Every outcome is counted under its own label, per consumer.
#[test]
fn outcomes_are_counted() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let inbox = Inbox::new(MemoryInbox::new());
            let m = |id: &str, v: u64| {
                InboxMessage::new("metrics-test", id)
                    .unwrap()
                    .ordered("agg", v)
                    .unwrap()
            };
            assert_eq!(
                inbox.process(&m("a", 1), ok).await.unwrap(),
                Delivery::Applied(())
            );
            assert_eq!(
                inbox.process(&m("a", 1), ok).await.unwrap(),
                Delivery::Duplicate
            );
            assert_eq!(
                inbox.process(&m("b", 1), ok).await.unwrap(),
                Delivery::Stale { last_applied: 1 }
            );
            assert_eq!(
                inbox.process(&m("c", 3), ok).await.unwrap(),
                Delivery::OutOfOrder { expected: 2 }
            );
            let failed = inbox
                .process(&m("d", 2), |_| {
                    Box::pin(async { Err::<(), _>(std::io::Error::other("no")) })
                })
                .await;
            assert!(failed.is_err());
        });
    });
    let text = handle.render();
    for outcome in ["applied", "duplicate", "stale", "out_of_order", "failed"] {
        let line =
            format!("{INBOX_MESSAGES_TOTAL}{{consumer=\"metrics-test\",outcome=\"{outcome}\"}} 1");
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}
