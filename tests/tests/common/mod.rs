//! Test harness: a real Mosquitto on a free port, the `meterstand` binary as a child process,
//! a QoS 1 publisher and a tiny HTTP GET. No mock broker, no fixed port.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use meterstand_model::{Calendar, Reading, TieredReading};
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::ManualClock;
use meterstand_store_rocks::{RocksStore, StoreConfig};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn mosquitto_binary() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "mosquitto is not installed: run `apt-get install mosquitto` (scripts/test does this for you)"
    );
}

fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// A Mosquitto broker with persistence, on a free loopback port.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// More listeners, each with its own settings (per_listener_settings is on).
    extra: String,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, "")
    }

    /// With more configuration after the plain listener, e.g. a TLS listener.
    pub fn start_with(dir: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        let mut m = Mosquitto {
            port,
            dir: dir.to_path_buf(),
            child: None,
            extra: extra.to_string(),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("mosquitto dir");
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user {user}\nper_listener_settings true\npersistence true\npersistence_location {dir}/\n\
                 autosave_interval 1\nmax_inflight_messages 1000\nmax_queued_messages 0\nmessage_size_limit 0\n\
                 log_dest file {dir}/mosquitto.log\nlistener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n",
                // Started as root, mosquitto would switch to user `mosquitto`, which cannot
                // write persistence into this test's private directory.
                user = current_user(),
                port = self.port,
                dir = self.dir.display(),
                extra = self.extra
            ),
        )
        .expect("write conf");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "mosquitto did not open port {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts a stopped broker again on the same port, with its persisted sessions.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `meterstand` binary built beside this test (`cargo build --workspace` puts it there).
pub fn meterstand_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("meterstand");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --release --workspace --all-targets`",
        bin.display()
    );
    bin
}

/// A directory layout for one service: key file outside the data directory.
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

    pub fn pseudonymiser(&self) -> Pseudonymiser {
        Pseudonymiser::new(&KeyRing::load(&self.key_file).expect("load key"))
    }

    /// Opens the store the service wrote (the service must be stopped).
    pub fn open_store(&self) -> RocksStore {
        let mut config = StoreConfig::new(&self.data);
        config.compression = meterstand_store_rocks::Compression::None;
        RocksStore::open(
            config,
            std::sync::Arc::new(ManualClock::new(Timestamp::now())),
        )
        .expect("open store")
    }
}

/// `meterstand run` as a child process.
pub struct ServiceProcess {
    pub child: Child,
    pub api: SocketAddr,
}

impl ServiceProcess {
    pub fn start(dirs: &ServiceDirs, broker_url: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let svc = ServiceProcess::spawn(dirs, broker_url, extra);
        svc.wait_ready(Duration::from_secs(30));
        svc
    }

    /// Starts the service without waiting for it to be ready.
    pub fn spawn(dirs: &ServiceDirs, broker_url: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&dirs.log)
            .expect("log file");
        let mut cmd = Command::new(meterstand_binary());
        cmd.arg("run")
            .arg("--config")
            .arg(&dirs.config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("METERSTAND_KEY_FILE", &dirs.key_file)
            .env("METERSTAND__BROKER__URL", broker_url)
            .env("METERSTAND__STORE__PATH", &dirs.data)
            .env("METERSTAND__STORE__COMPRESSION", "none")
            .env("METERSTAND__API__LISTEN", api.to_string())
            .env("METERSTAND__API__AUDIT_LOG", &dirs.audit)
            .env("METERSTAND__CONSENT__DEFAULT", "interval")
            .env("METERSTAND__LOG__LEVEL", "debug,rumqttc=info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start meterstand");
        let svc = ServiceProcess { child, api };
        // Wait until HTTP answers (not necessarily ready).
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(svc.api, "/healthz").is_none() {
            assert!(
                Instant::now() < deadline,
                "meterstand did not start on {}",
                svc.api
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        svc
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(self.api, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("meterstand did not become ready on {}", self.api);
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http(self.api, "GET", "/metrics", Some(&token("operator")), None)?;
        body.lines().find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok()).flatten()
        })
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

    /// SIGTERM and wait: the ordered shutdown.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "meterstand exited with {status}");
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.1 GET on loopback without a token: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path, None, None)
}

/// A bare HTTP/1.1 request on loopback: (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Some((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A QoS 1 publisher that waits for the broker's PubAck of every message.
pub struct Publisher {
    rt: tokio::runtime::Runtime,
    client: rumqttc::AsyncClient,
    acked: tokio::sync::watch::Receiver<u64>,
    pub sent: u64,
}

impl Publisher {
    pub fn connect(port: u16, id: &str) -> Publisher {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("rt");
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        options.set_inflight(500);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1000);
        let (tx, acked) = tokio::sync::watch::channel(0u64);
        rt.spawn(async move {
            let mut n = 0;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        n += 1;
                        let _ = tx.send(n);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            rt,
            client,
            acked,
            sent: 0,
        }
    }

    pub fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        let client = self.client.clone();
        let topic = topic.to_string();
        self.rt
            .block_on(async move {
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
            })
            .expect("publish");
        self.sent += 1;
    }

    /// Blocks until the broker acknowledged everything published so far.
    pub fn wait_acked(&mut self) {
        let target = self.sent;
        let mut acked = self.acked.clone();
        self.rt
            .block_on(async move {
                tokio::time::timeout(Duration::from_secs(60), acked.wait_for(|n| *n >= target))
                    .await
                    .map(|r| r.is_ok())
            })
            .map(|ok| assert!(ok, "publisher event loop ended"))
            .expect("broker acked everything within 60 s");
    }
}

/// A payload in `format` for a meter and readings, as a metering company would publish it.
pub fn payload(format: meterstand_codec::Format, meter: &str, readings: &[Reading]) -> Vec<u8> {
    let payload = meterstand_codec::WirePayload {
        meter: meter.into(),
        readings: readings
            .iter()
            .map(meterstand_codec::WireReading::from_reading)
            .collect(),
    };
    meterstand_codec::encode(format, &payload)
}

pub fn json_payload(meter: &str, readings: &[Reading]) -> Vec<u8> {
    payload(meterstand_codec::Format::Json, meter, readings)
}

pub fn bincode_payload(meter: &str, readings: &[Reading]) -> Vec<u8> {
    payload(meterstand_codec::Format::Bincode, meter, readings)
}

/// Quarter-hour aligned time `quarters` quarter-hours before now.
pub fn quarters_ago(quarters: i64) -> Timestamp {
    let now = Timestamp::now().as_second() / 900 * 900;
    Timestamp::from_second(now - quarters * 900).expect("in range")
}

pub fn tiered(r: Reading) -> TieredReading {
    TieredReading {
        reading: r,
        tiers: Calendar::amsterdam().tiers_of(r.register, r.time),
    }
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p)
            } else {
                out.push(p)
            }
        }
    }
    out
}

/// SHA-256 as hex, the form `[[api.tokens]] hash` takes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
