//! One privacy state per subject: an objection, an erasure or consent `off` holds across CRM
//! updates, re-registration and key versions.

#[allow(unused_imports)]
use super::*;

/// An objection, recorded by the privacy officer, keeps the subject's readings (billing,
/// subject export) and shuts it out of analysis; no CRM update, erasure or re-registration
/// withdraws it; only the privacy officer does, and what was kept meanwhile stays sealed.
pub fn an_objection_holds_until_the_privacy_officer_withdraws_it<B: Backend>(mut b: B) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let days: Vec<Timestamp> = (23..=25)
        .map(|d| ts(&format!("2026-11-{d}T23:00:00Z")))
        .collect();
    let mut items = Vec::new();
    for n in 0..3u8 {
        let p = pseudo(200 + n);
        put(&store, p, connection(ConsentLevel::Daily, "1234"));
        let mut readings = Vec::new();
        for (i, t) in days.iter().enumerate() {
            let i = i as u64;
            readings.push(tiered(Register::ImportT1, *t, 10_000 + i * 1000));
            readings.push(tiered(Register::ImportT2, *t, 20_000));
        }
        items.push(item(p, readings));
    }
    block_on(store.write(items)).expect("write");
    store.set_objection(&[pseudo(200)], true).expect("object");
    let open = |store: &B::Store| {
        let mut open = Vec::new();
        store
            .members(Tier::Day, RegisterKind::Import, &days, &mut |m| {
                if open_to_analysis(&m, Tier::Day, days[0]) {
                    open.push(m.pseudonym);
                }
            })
            .expect("members");
        open
    };
    assert_eq!(open(&store), vec![pseudo(201), pseudo(202)]);
    // The CRM's routine update, a consent change, an erasure and a re-registration.
    put(&store, pseudo(200), connection(ConsentLevel::Daily, "1234"));
    put(
        &store,
        pseudo(200),
        connection(ConsentLevel::Interval, "5678"),
    );
    assert!(
        !open(&store).contains(&pseudo(200)),
        "a CRM update withdrew it"
    );
    let export = store.export(&[pseudo(200)]).expect("export");
    assert_eq!(
        export.tier(Tier::Day).len(),
        6,
        "its readings are still held"
    );
    assert!(export.state.objected, "the export shows the objection");
    store.erase(&[pseudo(201)]).expect("erase");
    store.set_objection(&[pseudo(201)], true).expect("object");
    put(&store, pseudo(201), connection(ConsentLevel::Daily, "1234"));
    assert!(store.subject_state(&[pseudo(201)]).expect("state").objected);
    assert_eq!(open(&store), vec![pseudo(202)]);
    // Withdrawn by the privacy officer: what was kept while it held stays out.
    clock.set(ts("2026-12-03T00:00:00Z"));
    store
        .set_objection(&[pseudo(200)], false)
        .expect("withdraw");
    let state = store.subject_state(&[pseudo(200)]).expect("state");
    assert!(!state.objected);
    assert_eq!(state.sealed_before, Some(ts("2026-12-03T00:00:00Z")));
    assert_eq!(
        open(&store),
        vec![pseudo(202)],
        "sealed before the withdrawal"
    );
}

/// One state across key versions: an objection, an erasure or consent `off` recorded under
/// the versions known then holds for data under every version, also a version that comes
/// after it (carried over when the connection is seen under it). Data under an older
/// version, whose record moved on, is open to no analysis ("no record" is not "open").
pub fn one_state_holds_across_three_key_versions<B: Backend>(mut b: B) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let v = |version: u16| Pseudonym {
        version,
        ..pseudo(230)
    };
    let month = (ts("2026-09-30T22:00:00Z"), ts("2026-10-31T23:00:00Z"));
    let monthly = |t: Timestamp, value: u64| {
        vec![
            tiered(Register::ImportT1, t, value),
            tiered(Register::ImportT2, t, value),
        ]
    };
    let november = ts("2026-11-30T23:00:00Z");
    let counted = |store: &B::Store| {
        let mut n = 0;
        store
            .members(
                Tier::Month,
                RegisterKind::Import,
                &[month.0, month.1],
                &mut |m| {
                    if open_to_analysis(&m, Tier::Month, month.0)
                        && m.values.consumption(0).is_some()
                    {
                        n += 1;
                    }
                },
            )
            .expect("members");
        n
    };
    // v1: registered, October's readings; then the key rotates.
    put(&store, v(1), connection(ConsentLevel::Standard, "1234"));
    let mut october = monthly(month.0, 1000);
    october.extend(monthly(month.1, 1500));
    block_on(store.write(vec![item(v(1), october)])).expect("write");
    assert_eq!(counted(&store), 1, "open under its record");
    // v2: seen again (the record moves on).
    let mut seen = item(v(2), monthly(november, 2000));
    seen.previous = vec![v(1)];
    block_on(store.write(vec![seen])).expect("write");
    assert!(
        store.connection(v(1)).expect("record").is_none(),
        "moved to v2"
    );
    assert_eq!(
        counted(&store),
        0,
        "v1's October has no record of its own: not open"
    );
    put(&store, v(2), connection(ConsentLevel::Off, "1234"));
    store.set_objection(&[v(2), v(1)], true).expect("object");
    // v3 after another rotation: the objection and the seal follow the subject.
    let mut later = item(v(3), monthly(november, 3000));
    later.previous = vec![v(2), v(1)];
    let out = block_on(store.write(vec![later])).expect("write");
    assert_eq!(
        out.stored.total(),
        0,
        "consent off under v2 gates v3: {out:?}"
    );
    let state = store.subject_state(&[v(3)]).expect("state");
    assert!(state.objected && state.sealed_before.is_some(), "{state:?}");
    // The CRM raises consent again under all three: the objection still holds, and the
    // held months stay sealed.
    let all3 = [v(3), v(2), v(1)];
    store
        .put_connection(&all3, connection(ConsentLevel::Standard, "1234"))
        .expect("put");
    assert_eq!(counted(&store), 0);
    store.set_objection(&all3, false).expect("withdraw");
    assert_eq!(
        counted(&store),
        0,
        "held under a seal, whatever comes later"
    );
    // An erasure under all three versions reaches a fourth that comes after it.
    store.erase(&all3).expect("erase");
    let mut fourth = item(
        Pseudonym {
            version: 4,
            ..pseudo(230)
        },
        monthly(november, 3000),
    );
    fourth.previous = vec![v(3), v(2), v(1)];
    let out = block_on(store.write(vec![fourth])).expect("write");
    assert_eq!(
        out.stored.total(),
        0,
        "the erasure gates the new version: {out:?}"
    );
}
