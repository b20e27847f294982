//! Certificates for HTTPS tests, made fresh per run by the openssl command line (as for the
//! MQTT TLS broker): a CA, a server certificate for localhost / 127.0.0.1 signed by it, and
//! client certificates signed by it. Private keys are mode 0600, as the service demands.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::mosquitto::{make_certs, openssl};

/// A test CA in its own directory, with a server certificate it signed.
#[derive(Debug, Clone)]
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1` (PEM).
    pub server_cert: PathBuf,
    /// Its key (PEM, mode 0600).
    pub server_key: PathBuf,
}

impl TestCa {
    /// A CA named `name` below `dir` (created).
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let ca = make_certs(dir, name);
        let server_key = dir.join("server.key");
        owner_only(&server_key);
        owner_only(&dir.join("ca.key"));
        TestCa {
            dir: dir.to_path_buf(),
            ca,
            server_cert: dir.join("server.pem"),
            server_key,
        }
    }

    /// A client certificate (`CN=<name>`, clientAuth) signed by this CA: `(cert, key)`.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        let (key, csr, cert, ext) = (
            format!("client-{name}.key"),
            format!("client-{name}.csr"),
            format!("client-{name}.pem"),
            format!("client-{name}.ext"),
        );
        let subject = format!("/CN={name}");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subject,
            ],
        );
        std::fs::write(
            self.dir.join(&ext),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .expect("ext");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        owner_only(&self.dir.join(&key));
        (self.dir.join(cert), self.dir.join(key))
    }
}

/// chmod 600.
pub fn owner_only(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// A reqwest client that trusts only `ca` (no public roots) and presents `identity`
/// (`(cert, key)` PEM files) when given; no connection reuse, short connect timeout.
pub fn https_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca).expect("read CA");
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA pem"))
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(60))
        .pool_max_idle_per_host(0);
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(key).expect("read key");
        pem.push(b'\n');
        pem.extend(std::fs::read(cert).expect("read cert"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("https client")
}

/// A TLS connection to `addr` as `localhost`, trusting `ca` only, on which a test writes
/// HTTP by hand (e.g. to keep a request in flight).
pub async fn raw_tls(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("handshake")
}
