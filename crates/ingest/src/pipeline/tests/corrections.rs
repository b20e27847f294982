//! `ingest.corrections`: off by default, a correction is a counted reject and never applied.

use super::*;

/// With corrections off (the default), a correction of a stored reading is refused with its
/// own reason, acknowledged in its place, and changes nothing: the stored value stays, no
/// correction is counted and no audit line is written.
#[tokio::test(start_paused = true)]
async fn a_correction_while_corrections_are_off_is_a_counted_reject_never_applied() {
    let a = Audited::new();
    let mut c = config(10, Duration::from_millis(5));
    c.audit = Some(meterstand_audit::AuditLog::open(&a.audit_path()).expect("audit log"));
    assert!(!c.corrections, "corrections are opt-in");
    let h = start(c, Arc::new(StoreWriter(a.store.clone())));
    let refused = metrics::REJECTED.with_label_values(&[CORRECTIONS_DISABLED]);
    let before = refused.get();
    let midnight = "2024-12-31T23:00:00Z";
    h.tx.send(reading_on(1, "json", midnight, 12_345_678))
        .await
        .expect("send");
    h.tx.send(reading_on(2, "correction/json", midnight, 12_345_987))
        .await
        .expect("send");
    until("both acked", || h.acker.acked().len() == 2).await;
    assert_eq!(h.acker.acked(), vec![1, 2], "the reject is acknowledged");
    assert_eq!(refused.get() - before, 1, "counted as corrections_disabled");
    assert_eq!(h.status.rejected.load(Ordering::Relaxed), 1);
    assert_eq!(h.status.totals().corrected, 0);
    for tier in Tier::ALL {
        assert_eq!(a.stored(tier, midnight), vec![12_345_678], "{tier:?}");
    }
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
    assert!(correction_lines(&a.audit_path()).is_empty());
}

/// The reason label exists from the start, at zero, so that an alert on its increase sees
/// the first one.
#[tokio::test(start_paused = true)]
async fn the_corrections_disabled_series_exists_from_the_start() {
    let h = start(
        config(10, Duration::from_millis(5)),
        Arc::new(FakeWriter::default()),
    );
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
    let exposition = meterstand_telemetry::render_metrics();
    let series = format!(r#"meterstand_ingest_rejected_total{{reason="{CORRECTIONS_DISABLED}"}}"#);
    assert!(exposition.contains(&series), "no {series}");
}
