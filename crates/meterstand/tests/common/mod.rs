//! The service under test, two ways: in-process ([`InProcess`]: `Service::start` on a
//! runtime of the test's own, HTTP on `127.0.0.1:0`) for almost everything, and as the built
//! binary ([`Spawned`]: `env!("CARGO_BIN_EXE_meterstand")`) for what needs a process: signals,
//! exit codes, restarts after SIGKILL, and what the process writes to its log.
//! Shared fixtures (Mosquitto, EANs, publisher, HTTP client, seeds) come from
//! `meterstand-testkit`.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use meterstand::config::Config;
use meterstand::service::Service;
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::ManualClock;
use meterstand_store_rocks::{RocksStore, StoreConfig};
pub use meterstand_testkit::fleet::{bincode_payload, json_payload};
pub use meterstand_testkit::{
    Http, Mosquitto, Publisher, Response, Seed, bad_check_digit, ean_from, files_below,
    files_containing, free_port, meter_id, quarters_ago,
};

/// The binary cargo built for this package's tests.
pub const METERSTAND: &str = env!("CARGO_BIN_EXE_meterstand");

/// A directory layout for one service: key file outside the data directory.
#[derive(Debug)]
pub struct ServiceDirs {
    pub root: PathBuf,
    pub data: PathBuf,
    pub key_file: PathBuf,
    pub log: PathBuf,
    pub audit: PathBuf,
    /// A config file naming one token per role (crm and operator from token files, the others
    /// by hash, so both forms are exercised).
    pub config: PathBuf,
}

/// The token of `role` in every [`ServiceDirs`].
pub fn token(role: &str) -> String {
    format!("mst_test_{role}_0123456789abcdef")
}

/// The file holding [`token`] of `role`, mode 0600.
pub fn token_file(root: &Path, role: &str) -> PathBuf {
    root.join("tokens").join(format!("{role}.token"))
}

impl ServiceDirs {
    pub fn new(root: &Path) -> ServiceDirs {
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let key_file = keys.join("master.key");
        KeyRing::generate()
            .expect("random")
            .create(&key_file)
            .expect("key file");
        std::fs::create_dir_all(root.join("tokens")).expect("tokens dir");
        let mut config = String::new();
        for role in ["analyst", "privacy_officer", "crm", "operator"] {
            let file = token_file(root, role);
            std::fs::write(&file, format!("{}\n", token(role))).expect("token file");
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            config.push_str(&format!(
                "[[api.tokens]]\nid = \"{role}-1\"\nrole = \"{role}\"\n"
            ));
            if role == "crm" || role == "operator" {
                config.push_str(&format!("file = \"{}\"\n", file.display()));
            } else {
                let digest = sha256_hex(token(role).as_bytes());
                config.push_str(&format!("hash = \"sha256:{digest}\"\n"));
            }
        }
        // The journal and backups belong next to the data, inside the test's directory.
        config.push_str(&format!(
            "[store]\njournal = \"{}\"\n[backup]\ndir = \"{}\"\n",
            root.join("subject-journal.jsonl").display(),
            root.join("backups").display()
        ));
        let config_path = root.join("meterstand.toml");
        std::fs::write(&config_path, config).expect("config");
        ServiceDirs {
            root: root.into(),
            data: root.join("data"),
            key_file,
            log: root.join("service.log"),
            audit: root.join("audit.jsonl"),
            config: config_path,
        }
    }

    pub fn key_ring(&self) -> KeyRing {
        KeyRing::load(&self.key_file).expect("load key")
    }

    pub fn pseudonymiser(&self) -> Pseudonymiser {
        Pseudonymiser::new(&self.key_ring())
    }

    /// Opens the store the service wrote (the service must be stopped), with the default
    /// (long) retention, so that readings the service expired are visible unless removed.
    pub fn open_store(&self) -> RocksStore {
        let mut config = StoreConfig::new(&self.data);
        config.compression = meterstand_store_rocks::Compression::None;
        RocksStore::open(
            config,
            std::sync::Arc::new(ManualClock::new(Timestamp::now())),
        )
        .expect("open store")
    }

    /// The environment every service of these tests runs with, then `extra`.
    pub fn env(
        &self,
        broker_url: &str,
        api: &str,
        extra: &[(&str, &str)],
    ) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            ("METERSTAND_KEY_FILE", self.key_file.display().to_string()),
            ("METERSTAND__BROKER__URL", broker_url.to_string()),
            ("METERSTAND__STORE__PATH", self.data.display().to_string()),
            ("METERSTAND__STORE__COMPRESSION", "none".into()),
            ("METERSTAND__API__LISTEN", api.to_string()),
            (
                "METERSTAND__API__AUDIT_LOG",
                self.audit.display().to_string(),
            ),
            ("METERSTAND__CONSENT__DEFAULT", "interval".into()),
            ("METERSTAND__LOG__LEVEL", "debug,rumqttc=info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        env
    }
}

/// A synchronous face on the testkit's async HTTP client.
#[derive(Debug)]
pub struct Client {
    rt: tokio::runtime::Runtime,
    pub http: Http,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Client {
            rt,
            http: Http::new(addr),
        }
    }

    /// Over an already built [`Http`] (e.g. HTTPS with a test CA).
    pub fn with_http(http: Http) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Client { rt, http }
    }

    /// `(status, body)`, or `None` when the server does not answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        self.rt
            .block_on(self.http.request(method, path, token, body))
            .map(|r| (r.status, r.body))
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, None, None)
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.request("GET", "/metrics", Some(&token("operator")), None)?;
        meterstand_testkit::http::parse_metric(&body, name)
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("meterstand did not become ready on {}", self.http.base());
    }
}

/// The service in this process, on a runtime of its own.
pub struct InProcess {
    rt: tokio::runtime::Runtime,
    service: Option<Service>,
    pub api: SocketAddr,
    pub client: Client,
}

impl InProcess {
    /// Starts the service and waits until it is ready.
    pub fn start(dirs: &ServiceDirs, broker_url: &str, extra: &[(&str, &str)]) -> InProcess {
        let env = dirs.env(broker_url, "127.0.0.1:0", extra);
        let config = Config::load(Some(&dirs.config), &env).expect("config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let service = rt
            .block_on(Service::start(&config, &env))
            .expect("start the service");
        let api = service.api_addr;
        let svc = InProcess {
            rt,
            service: Some(service),
            api,
            client: Client::new(api),
        };
        svc.client.wait_ready(Duration::from_secs(30));
        svc
    }

    fn service(&self) -> &Service {
        self.service.as_ref().expect("running")
    }

    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        self.client.request(method, path, token, body)
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        self.client.metric(name)
    }

    pub fn connected(&self) -> bool {
        self.service().status.connected.load(Ordering::SeqCst)
    }

    /// Messages this service processed (written or rejected) and acknowledged.
    pub fn acked(&self) -> u64 {
        self.service().status.acked.load(Ordering::SeqCst)
    }

    /// Readings this service stored, per tier, from its own counters (metrics are per
    /// process and shared by every in-process service of a test binary).
    pub fn stored(&self) -> meterstand_store::TierCounts {
        self.service_totals().stored
    }

    /// Everything this service's writes reported so far.
    pub fn service_totals(&self) -> meterstand_store::WriteOutcome {
        self.service().status.totals()
    }

    /// Waits until this service acknowledged `n` messages.
    pub fn wait_acked(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let acked = self.acked();
            if acked >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {acked} of {n} messages acknowledged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ordered shutdown; panics when it reports an error.
    pub fn stop(mut self) {
        let service = self.service.take().expect("running");
        self.rt
            .block_on(service.shutdown())
            .expect("clean shutdown");
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            let _ = self.rt.block_on(service.shutdown());
        }
    }
}

/// `meterstand run` as a child process.
pub struct Spawned {
    pub child: Child,
    pub api: SocketAddr,
    pub client: Client,
}

impl Spawned {
    pub fn start(dirs: &ServiceDirs, broker_url: &str, extra: &[(&str, &str)]) -> Spawned {
        let svc = Spawned::spawn(dirs, broker_url, extra);
        svc.client.wait_ready(Duration::from_secs(30));
        svc
    }

    /// Starts the service and waits until HTTP answers (not necessarily ready).
    pub fn spawn(dirs: &ServiceDirs, broker_url: &str, extra: &[(&str, &str)]) -> Spawned {
        Spawned::spawn_with(dirs, broker_url, extra, Client::new)
    }

    /// Like [`Spawned::spawn`], talking to the API with the client `client` makes for its
    /// address (e.g. HTTPS with a test CA).
    pub fn spawn_with(
        dirs: &ServiceDirs,
        broker_url: &str,
        extra: &[(&str, &str)],
        client: impl FnOnce(SocketAddr) -> Client,
    ) -> Spawned {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&dirs.log)
            .expect("log file");
        let mut cmd = Command::new(METERSTAND);
        cmd.arg("run")
            .arg("--config")
            .arg(&dirs.config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(dirs.env(broker_url, &api.to_string(), extra))
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start meterstand");
        let svc = Spawned {
            child,
            api,
            client: client(api),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while svc.client.get("/healthz").is_none() {
            assert!(
                Instant::now() < deadline,
                "meterstand did not start on {api}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        svc
    }

    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        self.client.request(method, path, token, body)
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        self.client.metric(name)
    }

    /// Waits until ingest has taken and acknowledged everything the broker held for it when
    /// this was called: publishes a marker behind it (an invalid payload, on a topic of its
    /// own) and waits for the marker's reject to be counted with nothing left unacknowledged.
    /// The broker delivers a session's messages in order, so nothing queued before the
    /// marker is still on its way.
    pub fn drain(&self, publisher: &mut Publisher, timeout: Duration) {
        let rejected = || {
            let (_, body) = self
                .http("GET", "/metrics", Some(&token("operator")), None)
                .expect("metrics");
            body.lines()
                .filter(|l| l.starts_with("meterstand_ingest_rejected_total"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>()
        };
        let before = rejected();
        publisher.publish("meters/drain-marker/json", b"not json".to_vec());
        publisher.wait_acked();
        let deadline = Instant::now() + timeout;
        while rejected() <= before || self.metric("meterstand_ingest_unacked_messages") != Some(0.0)
        {
            assert!(
                Instant::now() < deadline,
                "ingest did not drain in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `meterstand_ingest_messages_total` reaches `n` and nothing is unacked.
    pub fn wait_acked(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self
                .metric("meterstand_ingest_messages_total")
                .unwrap_or(0.0) as u64;
            let unacked = self
                .metric("meterstand_ingest_unacked_messages")
                .unwrap_or(1.0);
            if seen >= n && unacked == 0.0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {seen} of {n} messages processed (unacked {unacked})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait: the ordered shutdown, which must exit 0.
    pub fn stop(mut self) {
        signal(&self.child, "TERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "meterstand exited with {status}");
    }

    /// SIGKILL: no shutdown at all.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `SIG{name}` to a child.
pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
}

/// The meterstand CLI with the test's config and store (clients and offline commands).
/// The CLI as the operator's shell would run it against the test's service: its config,
/// store, key file and audit log.
pub fn cli_command(dirs: &ServiceDirs, args: &[&str]) -> Command {
    let mut command = Command::new(METERSTAND);
    command
        .args(["--config".as_ref(), dirs.config.as_os_str()])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("METERSTAND__STORE__PATH", &dirs.data)
        .env("METERSTAND__STORE__COMPRESSION", "none")
        // Restore, key rotation and the audit commands chain lines under the master key.
        .env("METERSTAND_KEY_FILE", &dirs.key_file)
        .env("METERSTAND__API__AUDIT_LOG", &dirs.audit)
        .stdin(Stdio::null());
    command
}

pub fn cli(dirs: &ServiceDirs, args: &[&str]) -> std::process::Output {
    cli_command(dirs, args).output().expect("run meterstand")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// SHA-256 as hex, the form `[[api.tokens]] hash` takes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
