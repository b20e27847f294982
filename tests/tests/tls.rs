//! `mqtts://` against a real Mosquitto TLS listener with a password file: readings arrive over
//! TLS; a wrong password or an unknown CA keeps the service unready instead of silently
//! waiting. Certificates come from the openssl command line, made fresh per run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use jiff::Timestamp;
use meterstand_model::{Ean, Reading, Register};
use meterstand_store::ReadingStore;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl) is installed by scripts/test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for localhost / 127.0.0.1, signed by it; returns the CA path.
fn make_certs(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("cert dir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_subject = format!("/CN=meterstand test CA {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &ca_subject,
    ]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    dir.join("ca.pem")
}

fn stays_unready(svc: &ServiceProcess, for_how_long: Duration) {
    let until = Instant::now() + for_how_long;
    while Instant::now() < until {
        let (status, body) = http_get(svc.api, "/readyz").expect("readyz");
        assert_eq!(status, 503, "ready although the broker refused us: {body}");
        assert!(body.contains(r#""broker_connected":false"#), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(svc.metric("meterstand_mqtt_connected"), Some(0.0));
}

#[test]
fn mqtts_with_password_ingests_and_bad_credentials_or_ca_keep_it_unready() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    let ca = make_certs(&certs, "real");
    let other_ca = make_certs(&tmp.path().join("other"), "other");
    let passwd = tmp.path().join("passwd");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["meterstand", "s3cret-broker-pass"])
        .output()
        .expect("mosquitto_passwd (Debian package mosquitto)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls_port = free_port();
    let broker = Mosquitto::start_with(
        &tmp.path().join("mosquitto"),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
             allow_anonymous false\npassword_file {passwd}\n",
            ca = ca.display(),
            dir = certs.display(),
            passwd = passwd.display()
        ),
    );
    let url = format!("mqtts://localhost:{tls_port}");
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
    let svc = ServiceProcess::spawn(&dirs, &url, &wrong);
    stays_unready(&svc, Duration::from_secs(2));
    svc.kill();
    // A CA that did not sign the broker's certificate: the handshake fails.
    let other = other_ca.display().to_string();
    let mut untrusted = good.clone();
    untrusted[0].1 = &other;
    let svc = ServiceProcess::spawn(&dirs, &url, &untrusted);
    stays_unready(&svc, Duration::from_secs(2));
    svc.kill();
    let log = std::fs::read_to_string(&dirs.log).expect("log");
    assert!(
        log.contains("mqtt broker unreachable"),
        "the refusal is logged"
    );
    assert!(!log.contains("s3cret-broker-pass") && !log.contains("not-the-password"));

    // The right ones: readings published on the plain listener arrive over TLS.
    let svc = ServiceProcess::start(&dirs, &url, &good);
    let ean = Ean::from_body(87_100_000_000_300_001).expect("ean");
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
