//! `mqtts://` against a real Mosquitto TLS listener with a password file: readings arrive over
//! TLS; a wrong password or an unknown CA keeps the service unready instead of silently
//! waiting. Certificates come from the openssl command line, made fresh per run. The service
//! runs as a child process: the test reads what it logged about the refusals.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jiff::Timestamp;
use meterstand_model::{Reading, Register};
use meterstand_store::ReadingStore;
use meterstand_testkit::TlsBroker;

fn stays_unready(svc: &Spawned, for_how_long: Duration) {
    let until = Instant::now() + for_how_long;
    while Instant::now() < until {
        let (status, body) = svc.client.get("/readyz").expect("readyz");
        assert_eq!(status, 503, "ready although the broker refused us: {body}");
        assert!(body.contains(r#""broker_connected":false"#), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(svc.metric("meterstand_mqtt_connected"), Some(0.0));
}

#[test]
fn mqtts_with_password_ingests_and_bad_credentials_or_ca_keep_it_unready() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tls = TlsBroker::start(tmp.path(), "meterstand", "s3cret-broker-pass");
    let broker = &tls.broker;
    let (ca, other_ca) = (&tls.ca, &tls.other_ca);
    let url = tls.url();
    let ca_text = ca.display().to_string();
    let good: Vec<(&str, &str)> = vec![
        ("METERSTAND__BROKER__CA_FILE", &ca_text),
        ("METERSTAND__BROKER__USERNAME", "meterstand"),
        ("METERSTAND__BROKER__PASSWORD", "s3cret-broker-pass"),
    ];

    // A wrong password: refused by the broker, reported, not ready.
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let mut wrong = good.clone();
    wrong[2].1 = "not-the-password";
    let svc = Spawned::spawn(&dirs, &url, &wrong);
    stays_unready(&svc, Duration::from_secs(2));
    svc.kill();
    // A CA that did not sign the broker's certificate: the handshake fails.
    let other = other_ca.display().to_string();
    let mut untrusted = good.clone();
    untrusted[0].1 = &other;
    let svc = Spawned::spawn(&dirs, &url, &untrusted);
    stays_unready(&svc, Duration::from_secs(2));
    svc.kill();
    let log = std::fs::read_to_string(&dirs.log).expect("log");
    assert!(
        log.contains("mqtt broker unreachable"),
        "the refusal is logged"
    );
    assert!(!log.contains("s3cret-broker-pass") && !log.contains("not-the-password"));

    // The right ones: readings published on the plain listener arrive over TLS.
    let svc = Spawned::start(&dirs, &url, &good);
    let ean = ean_from(3, 1);
    let start = quarters_ago(8);
    let readings: Vec<Reading> = (0..4)
        .map(|i| Reading {
            register: Register::ImportT1,
            time: Timestamp::from_second(start.as_second() + i * 900).expect("time"),
            value: 2_000_000 + i as u64 * 10,
        })
        .collect();
    let mut publisher = Publisher::connect(broker.port, "tls-test-publisher");
    publisher.publish(
        &format!("meters/{}/json", ean.expose()),
        json_payload("E0031003262700003", &readings),
    );
    publisher.wait_acked();
    svc.wait_acked(1, Duration::from_secs(30));
    svc.stop();
    let store = dirs.open_store();
    let export = store
        .export(&[dirs.pseudonymiser().ean(&ean)])
        .expect("export");
    assert_eq!(export.interval.len(), 4);
    assert_eq!(export.interval[3].value, 2_000_030);
}
