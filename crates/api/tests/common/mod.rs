//! The server fixture the statistics suites share: the real router over `MemStore` on a free
//! port, one token per role (`tok-<role>`), the freeze job run on demand at a chosen instant.

// Each test file compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use meterstand_api::{
    ApiConfig, ApiParts, ApiState, AuditLog, Readiness, Role, TokenTable, hash_token,
};
use meterstand_model::{Calendar, Connection, ConsentLevel, Ean, Reading, Register, TieredReading};
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::freeze::{FreezeConfig, run};
use meterstand_store::{
    IngestItem, ManualClock, MemStore, ReadingStore, ReadingWriter, WriteOutcome,
};
use serde_json::Value;

/// A service that is always ready: the store is the in-memory one, there is no broker.
pub struct AlwaysReady;
impl Readiness for AlwaysReady {
    fn store_open(&self) -> bool {
        true
    }
    fn broker_receiving(&self) -> bool {
        true
    }
}

/// The bearer token of `role` in every API test.
pub fn token(role: Role) -> String {
    format!("tok-{}", role.as_str())
}

/// A token table with one token per role in `roles`, ids `<role>-<tag>`: a tag of its own
/// keeps a test's per-token metrics apart from those of tests running alongside.
pub fn token_table(tag: &str, roles: &[Role]) -> TokenTable {
    let hashes: Vec<(String, Role, String)> = roles
        .iter()
        .map(|r| (format!("{}-{tag}", r.as_str()), *r, hash_token(&token(*r))))
        .collect();
    TokenTable::new(hashes.iter().map(|(i, r, h)| (i.as_str(), *r, h.as_str()))).expect("tokens")
}

/// The API's state over a fresh `MemStore` whose clock stands at `now`, with the tokens of
/// [`token_table`], its audit log and backups in a temporary directory.
pub struct Fixture {
    pub state: ApiState,
    pub store: Arc<MemStore>,
    pub clock: ManualClock,
    pub ps: Arc<Pseudonymiser>,
    pub audit: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(mut config: ApiConfig, now: Timestamp, tag: &str) -> Fixture {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        config.backup_dir = dir.path().join("backups");
        let clock = ManualClock::new(now);
        let store = Arc::new(MemStore::new(Arc::new(clock.clone())));
        let ps = Arc::new(Pseudonymiser::new(&KeyRing::generate().expect("key")));
        let audit = dir.path().join("audit.jsonl");
        let backend: Arc<dyn ReadingStore> = store.clone();
        let state = ApiState::new(ApiParts {
            readiness: Arc::new(AlwaysReady),
            backend,
            pseudonymiser: ps.clone(),
            tokens: token_table(tag, &Role::ALL),
            audit: AuditLog::open(&audit).expect("audit"),
            calendar: Calendar::amsterdam(),
            config,
        });
        Fixture {
            state,
            store,
            clock,
            ps,
            audit,
            dir,
        }
    }

    /// Serves the state on a free loopback port (HTTPS with `tls`) until `stop`.
    pub async fn serve(
        &self,
        tls: Option<meterstand_api::Tls>,
        stop: tokio_util::sync::CancellationToken,
    ) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = self.state.clone();
        tokio::spawn(async move {
            let _ = match tls {
                Some(tls) => meterstand_api::serve_tls(listener, state, tls, stop).await,
                None => meterstand_api::serve(listener, state, stop).await,
            };
        });
        addr
    }
}

/// The clock of [`Api::start`].
pub const NOW: &str = "2026-11-20T12:00:00Z";

pub struct Api {
    pub base: String,
    pub store: Arc<MemStore>,
    pub clock: ManualClock,
    pub ps: Arc<Pseudonymiser>,
    pub http: reqwest::Client,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub fn ean(n: u64) -> Ean {
    Ean::from_body(87_168_712_000_000_000 + n).expect("ean")
}

impl Api {
    pub async fn start() -> Api {
        Api::start_at(NOW.parse().expect("now")).await
    }

    /// A server whose store's clock (retention, late readings) stands at `now`.
    pub async fn start_at(now: Timestamp) -> Api {
        let f = Fixture::new(ApiConfig::default(), now, "s");
        let addr = f
            .serve(None, tokio_util::sync::CancellationToken::new())
            .await;
        Api {
            base: format!("http://{addr}"),
            store: f.store,
            clock: f.clock,
            ps: f.ps,
            http: reqwest::Client::new(),
            audit: f.audit,
            _dir: f.dir,
        }
    }

    /// `method path` as `role`, with an optional JSON body: status and body text.
    pub async fn send(
        &self,
        method: reqwest::Method,
        role: Role,
        path: &str,
        body: Option<String>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token(role));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send().await.expect("send");
        (r.status().as_u16(), r.text().await.expect("text"))
    }

    pub async fn get(&self, role: Role, path: &str) -> (u16, String) {
        self.send(reqwest::Method::GET, role, path, None).await
    }

    /// Status, content type and body bytes of `GET path` as `role`.
    pub async fn get_bytes(&self, role: Role, path: &str) -> (u16, String, Vec<u8>) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token(role))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (
            status,
            content_type,
            r.bytes().await.expect("body").to_vec(),
        )
    }

    pub async fn json(&self, role: Role, path: &str) -> Value {
        let (status, text) = self.get(role, path).await;
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).expect("json")
    }

    /// Registers a connection directly on the store (no HTTP), as the CRM would.
    pub fn register(&self, e: &Ean, consent: ConsentLevel, postcode: u16, profile: &str) {
        let c = Connection {
            consent,
            postcode4: Some(meterstand_model::Postcode4::new(postcode).expect("pc")),
            profile: Some(profile.parse().expect("profile")),
        };
        tokio::task::block_in_place(|| self.store.put_connection(&[self.ps.ean(e)], c))
            .expect("put");
    }

    pub async fn write(&self, items: Vec<IngestItem>) -> WriteOutcome {
        ReadingWriter::write(self.store.as_ref(), items)
            .await
            .expect("write")
    }

    /// Readings every quarter-hour of local 2026-11-02 and its end: the quarter-hours and
    /// the day boundaries (what the gate keeps depends on consent).
    pub async fn write_day(&self, e: &Ean, step: u64) {
        let cal = Calendar::amsterdam();
        let start = cal
            .date_start(jiff::civil::date(2026, 11, 2))
            .expect("start");
        let mut readings = Vec::new();
        for i in 0..=96i64 {
            let t = Timestamp::from_second(start.as_second() + i * 900).expect("t");
            for (register, value) in [
                (Register::ImportT1, 1000 + i as u64 * step),
                (Register::ImportT2, 7),
            ] {
                readings.push(TieredReading {
                    reading: Reading {
                        register,
                        time: t,
                        value,
                    },
                    tiers: cal.tiers_of(register, t),
                });
            }
        }
        let item = IngestItem {
            correction: false,
            connection: self.ps.ean(e),
            previous: Vec::new(),
            meter: self.ps.meter(&"E0031003262764316".parse().expect("meter")),
            readings,
        };
        self.write(vec![item]).await;
    }

    /// The freeze job as the service runs it, at [`NOW`].
    pub fn freeze(&self) {
        self.freeze_at(NOW.parse().expect("now"));
    }

    /// The freeze job at `now`: every period written to that has settled is due, without
    /// waiting for `statistics.quiet` (the tests write and then freeze at the same instant).
    /// Run until nothing due is left (a call's work is bounded by its budget).
    pub fn freeze_at(&self, now: Timestamp) {
        let cfg = FreezeConfig {
            quiet: Duration::ZERO,
            ..Default::default()
        };
        loop {
            let report = tokio::task::block_in_place(|| {
                run(self.store.as_ref(), &Calendar::amsterdam(), &cfg, now)
            })
            .expect("freeze");
            if report.due_left == 0 {
                break;
            }
        }
    }

    /// Where the server writes its audit log.
    pub fn audit_path(&self) -> std::path::PathBuf {
        self.audit.clone()
    }

    /// The raw audit log.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.audit_path()).unwrap_or_default()
    }

    /// The audit log's lines, parsed.
    pub fn audit_lines(&self) -> Vec<Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit json"))
            .collect()
    }

    /// `PUT` (`object`) or `DELETE` `/v1/subjects/{ean}/objection` as the privacy officer:
    /// the subject's state as answered.
    pub async fn objection(&self, e: &Ean, object: bool) -> Value {
        let method = if object {
            reqwest::Method::PUT
        } else {
            reqwest::Method::DELETE
        };
        let path = format!("/v1/subjects/{}/objection", e.expose());
        let (status, text) = self.send(method, Role::PrivacyOfficer, &path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).expect("json")
    }
}
