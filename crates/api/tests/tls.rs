//! HTTPS over `MemStore`: certificates made per run by the openssl command line; the API over
//! TLS with ConnectInfo in the audit log; a plaintext request to the TLS port fails; mutual
//! TLS refuses a missing or foreign client certificate; a stalled handshake is cut off by the
//! header timeout; a reload swaps the certificate for new connections while a request in
//! flight on an old one completes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{Fixture, token};
use meterstand_api::{ApiConfig, Role, TlsFiles};
use meterstand_testkit::{TestCa, https_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Server {
    addr: SocketAddr,
    tls: meterstand_api::Tls,
    audit: std::path::PathBuf,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(files: TlsFiles, header_timeout: Duration) -> Server {
    let config = ApiConfig {
        header_timeout,
        ..ApiConfig::default()
    };
    let f = Fixture::new(config, "2026-11-20T12:00:00Z".parse().expect("now"), "tls");
    let tls = meterstand_api::Tls::load(files).expect("tls config");
    let stop = CancellationToken::new();
    let addr = f.serve(Some(tls.clone()), stop.clone()).await;
    Server {
        addr,
        tls,
        audit: f.audit,
        stop,
        _dir: f.dir,
    }
}

fn files(ca: &TestCa, client_ca: Option<&Path>) -> TlsFiles {
    TlsFiles {
        cert: ca.server_cert.clone(),
        key: ca.server_key.clone(),
        client_ca: client_ca.map(Path::to_path_buf),
    }
}

/// `GET https://localhost:PORT/healthz` with `client`; `Err` with the error chain text.
async fn healthz(client: &reqwest::Client, addr: SocketAddr) -> Result<u16, String> {
    client
        .get(format!("https://localhost:{}/healthz", addr.port()))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn https_serves_the_api_and_plaintext_to_the_tls_port_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(&tmp.path().join("ca"), "https");
    let s = start(files(&ca, None), Duration::from_secs(10)).await;
    let client = https_client(&ca.ca, None);
    assert_eq!(healthz(&client, s.addr).await, Ok(200));
    // A role call over TLS, audited with the client's address (ConnectInfo over TLS).
    let resp = client
        .put(format!(
            "https://localhost:{}/v1/connections/{}",
            s.addr.port(),
            meterstand_testkit::ean_from(7, 1).expose()
        ))
        .bearer_auth(token(Role::Crm))
        .header("content-type", "application/json")
        .body(r#"{"consent":"daily","postcode4":"1000","profile":"E1A"}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    let audit = std::fs::read_to_string(&s.audit).expect("audit");
    assert!(
        audit.contains("connection.put") && audit.contains("127.0.0.1:"),
        "{audit}"
    );
    // By IP address too (the certificate names 127.0.0.1).
    let by_ip = client
        .get(format!("https://{}/readyz", s.addr))
        .send()
        .await
        .expect("by ip");
    assert_eq!(by_ip.status().as_u16(), 200);

    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = meterstand_testkit::Http::new(s.addr);
    assert!(plain.get("/healthz", None).await.is_none());
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.expect("tcp");
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "plaintext was served"
    );
    // A client that does not trust the CA refuses the server.
    let other = TestCa::new(&tmp.path().join("other"), "other");
    let err = healthz(&https_client(&other.ca, None), s.addr)
        .await
        .expect_err("untrusted server certificate");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn mutual_tls_refuses_missing_and_foreign_client_certificates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(&tmp.path().join("ca"), "server");
    let clients = TestCa::new(&tmp.path().join("clients"), "clients");
    let foreign = TestCa::new(&tmp.path().join("foreign"), "foreign");
    let s = start(files(&ca, Some(&clients.ca)), Duration::from_secs(10)).await;

    let (cert, key) = clients.client("crm");
    let good = https_client(&ca.ca, Some((&cert, &key)));
    assert_eq!(healthz(&good, s.addr).await, Ok(200));

    let none = https_client(&ca.ca, None);
    assert!(
        healthz(&none, s.addr).await.is_err(),
        "no client certificate"
    );
    let (cert, key) = foreign.client("crm");
    let wrong = https_client(&ca.ca, Some((&cert, &key)));
    assert!(
        healthz(&wrong, s.addr).await.is_err(),
        "a client certificate signed by another CA"
    );
    // Refusals do not disturb the server: the right certificate still works.
    assert_eq!(healthz(&good, s.addr).await, Ok(200));
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off_by_the_header_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(&tmp.path().join("ca"), "stall");
    let s = start(files(&ca, None), Duration::from_secs(1)).await;
    for prefix in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut raw = tokio::net::TcpStream::connect(s.addr).await.expect("tcp");
        raw.write_all(prefix).await.expect("write");
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
            .await
            .expect("the server closes a stalled handshake");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    // The server still serves.
    assert_eq!(healthz(&https_client(&ca.ca, None), s.addr).await, Ok(200));
}

#[tokio::test]
async fn reload_swaps_the_certificate_while_a_request_in_flight_completes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = TestCa::new(&tmp.path().join("first"), "first");
    let second = TestCa::new(&tmp.path().join("second"), "second");
    // The served files: copies, overwritten by the "renewal".
    let (cert, key) = (tmp.path().join("api.pem"), tmp.path().join("api.key"));
    std::fs::copy(&first.server_cert, &cert).expect("copy");
    std::fs::copy(&first.server_key, &key).expect("copy");
    meterstand_testkit::certs::owner_only(&key);
    let s = start(
        TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        },
        Duration::from_secs(10),
    )
    .await;

    // A PUT whose body is half sent on a connection made with the first certificate.
    let body = br#"{"consent":"daily","postcode4":"1000","profile":"E1A"}"#;
    let mut old = meterstand_testkit::certs::raw_tls(s.addr, &first.ca).await;
    let head = format!(
        "PUT /v1/connections/{} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        meterstand_testkit::ean_from(7, 2).expose(),
        token(Role::Crm),
        body.len()
    );
    old.write_all(head.as_bytes()).await.expect("head");
    old.write_all(&body[..10]).await.expect("half body");
    old.flush().await.expect("flush");

    // A broken replacement is refused and the old certificate stays.
    std::fs::write(&cert, "not a certificate").expect("write");
    assert!(s.tls.reload().is_err());
    assert_eq!(
        healthz(&https_client(&first.ca, None), s.addr).await,
        Ok(200)
    );

    std::fs::copy(&second.server_cert, &cert).expect("copy");
    std::fs::copy(&second.server_key, &key).expect("copy");
    s.tls.reload().expect("reload");
    // New connections see the new certificate.
    assert_eq!(
        healthz(&https_client(&second.ca, None), s.addr).await,
        Ok(200)
    );
    assert!(
        healthz(&https_client(&first.ca, None), s.addr)
            .await
            .is_err()
    );

    // The request in flight completes on its old connection.
    old.write_all(&body[10..]).await.expect("rest of body");
    old.flush().await.expect("flush");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), old.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
