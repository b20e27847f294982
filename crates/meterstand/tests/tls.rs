//! TLS at both ends of the service. `mqtts://` against a real Mosquitto TLS listener with a
//! password file: readings arrive over TLS; a wrong password or an unknown CA keeps the
//! service unready instead of silently waiting. HTTPS for the API: the binary serves it, SIGHUP
//! swaps the certificate for new connections while a request in flight completes, the CLI
//! clients reach it by default with `--ca-file`, and a plaintext listener off loopback is
//! refused. Certificates come from the openssl command line, made fresh per run. The service
//! runs as a child process: the test reads what it logged and sends it signals.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jiff::Timestamp;
use meterstand_model::{Reading, Register};
use meterstand_store::ReadingStore;
use meterstand_testkit::{TestCa, TlsBroker, https_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn stays_unready(svc: &Spawned, for_how_long: Duration) {
    let until = Instant::now() + for_how_long;
    while Instant::now() < until {
        let (status, body) = svc.client.get("/readyz").expect("readyz");
        assert_eq!(status, 503, "ready although the broker refused us: {body}");
        assert!(body.contains(r#""broker_receiving":false"#), "{body}");
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

#[test]
fn a_plaintext_listener_off_loopback_is_refused_with_the_key_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = ServiceDirs::new(tmp.path());
    let port = free_port();
    let out = std::process::Command::new(METERSTAND)
        .arg("run")
        .arg("--config")
        .arg(&dirs.config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(dirs.env("mqtt://127.0.0.1:1", &format!("0.0.0.0:{port}"), &[]))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run meterstand");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("api.listen")
            && err.contains(&format!("0.0.0.0:{port}"))
            && err.contains("api.allow_plaintext")
            && err.contains("METERSTAND__API__LISTEN"),
        "{err}"
    );
}

/// The binary serves HTTPS from the configured files; SIGHUP re-reads them: a new connection
/// sees the new certificate while a request sent on an old connection completes. The CLI
/// reaches the API by default over https:// with --ca-file.
#[test]
fn https_service_reloads_its_certificate_on_sighup_and_the_cli_uses_https() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start();
    let first = TestCa::new(&tmp.path().join("first"), "first");
    let second = TestCa::new(&tmp.path().join("second"), "second");
    let (cert, key) = (tmp.path().join("api.pem"), tmp.path().join("api.key"));
    std::fs::copy(&first.server_cert, &cert).expect("copy");
    std::fs::copy(&first.server_key, &key).expect("copy");
    meterstand_testkit::certs::owner_only(&key);
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let extra = [
        ("METERSTAND__API__TLS_CERT", cert_s.as_str()),
        ("METERSTAND__API__TLS_KEY", key_s.as_str()),
    ];
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let first_ca = first.ca.clone();
    let svc = Spawned::spawn_with(&dirs, &broker.url(), &extra, |addr| {
        Client::with_http(Http::with_client(
            format!("https://localhost:{}", addr.port()),
            https_client(&first_ca, None),
        ))
    });
    svc.client.wait_ready(Duration::from_secs(30));
    // Plain HTTP to the HTTPS port gets no answer.
    assert!(Client::new(svc.api).get("/healthz").is_none());

    // The CLI: default server https://<api.listen>, trusting the CA from --ca-file.
    let ean = ean_from(3, 9).expose().to_string();
    let crm = token_file(&dirs.root, "crm");
    let po = token_file(&dirs.root, "privacy_officer");
    let run_cli = |args: &[&str]| {
        std::process::Command::new(METERSTAND)
            .args(["--config".as_ref(), dirs.config.as_os_str()])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(dirs.env(&broker.url(), &svc.api.to_string(), &extra))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run meterstand")
    };
    let csv = tmp.path().join("connections.csv");
    std::fs::write(
        &csv,
        format!("ean,consent,postcode4,profile\n{ean},daily,1000,E1A\n"),
    )
    .expect("csv");
    let first_ca_s = first.ca.display().to_string();
    let out = run_cli(&[
        "connections",
        "import",
        csv.to_str().expect("utf-8"),
        "--token-file",
        crm.to_str().expect("utf-8"),
        "--ca-file",
        &first_ca_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_cli(&[
        "subject",
        "export",
        "--ean",
        &ean,
        "--token-file",
        po.to_str().expect("utf-8"),
        "--ca-file",
        &first_ca_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("daily"), "{}", text(&out.stdout));
    // Without the CA the server is not trusted, and the CLI says it could not reach it.
    let out = run_cli(&[
        "subject",
        "export",
        "--ean",
        &ean,
        "--token-file",
        po.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("https://127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );

    // A request in flight on a connection made with the first certificate.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = br#"{"consent":"daily","postcode4":"1000","profile":"E1A"}"#;
    let mut old = rt.block_on(meterstand_testkit::certs::raw_tls(svc.api, &first.ca));
    let head = format!(
        "PUT /v1/connections/{} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ean_from(3, 10).expose(),
        token("crm"),
        body.len()
    );
    rt.block_on(async {
        old.write_all(head.as_bytes()).await.expect("head");
        old.write_all(&body[..10]).await.expect("half body");
        old.flush().await.expect("flush");
    });

    // Renewal: new files, SIGHUP.
    std::fs::copy(&second.server_cert, &cert).expect("copy");
    std::fs::copy(&second.server_key, &key).expect("copy");
    signal(&svc.child, "HUP");
    let fresh = Client::with_http(Http::with_client(
        format!("https://localhost:{}", svc.api.port()),
        https_client(&second.ca, None),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fresh.get("/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // New connections trusting only the first CA now fail.
    assert!(svc.client.get("/healthz").is_none());

    let answer = rt.block_on(async {
        old.write_all(&body[10..]).await.expect("rest of body");
        old.flush().await.expect("flush");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), old.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let log = std::fs::read_to_string(&dirs.log).expect("log");
    assert!(log.contains("https certificate re-read"), "{log}");
    drop(svc);
}
