//! The API over HTTP: a real server on 127.0.0.1:0 over the in-memory store (held to the
//! RocksDB engine's behaviour by the store's conformance suite), driven by a real HTTP client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::date;
use meterstand_api::{
    ApiConfig, ApiParts, ApiState, AuditLog, Readiness, Role, TokenTable, hash_token,
};
use meterstand_model::{Calendar, Connection, ConsentLevel, Ean, Reading, Register, TieredReading};
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::{IngestItem, ManualClock, MemStore, ReadingStore, ReadingWriter};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct AlwaysReady;
impl Readiness for AlwaysReady {
    fn store_open(&self) -> bool {
        true
    }
    fn broker_connected(&self) -> bool {
        true
    }
}

struct Server {
    addr: SocketAddr,
    http: reqwest::Client,
    store: Arc<MemStore>,
    pseudonymiser: Arc<Pseudonymiser>,
    audit: PathBuf,
    calendar: Calendar,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn token(role: Role) -> String {
    format!("test-token-{}", role.as_str())
}

fn ean(n: u64) -> Ean {
    Ean::from_body(87_168_712_000_000_000 + n).expect("ean")
}

const NOW: &str = "2026-11-20T12:00:00Z";

impl Server {
    async fn start(config: ApiConfig) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(NOW.parse().expect("now")));
        let store = Arc::new(MemStore::new(clock));
        let pseudonymiser = Arc::new(Pseudonymiser::new(&KeyRing::generate().expect("key")));
        let hashes: Vec<(String, Role, String)> = Role::ALL
            .iter()
            .map(|r| (format!("{}-1", r.as_str()), *r, hash_token(&token(*r))))
            .collect();
        let tokens = TokenTable::new(
            hashes
                .iter()
                .map(|(id, r, h)| (id.as_str(), *r, h.as_str())),
        )
        .expect("tokens");
        let audit = dir.path().join("audit").join("audit.jsonl");
        let backend: Arc<dyn ReadingStore> = store.clone();
        let state = ApiState::new(ApiParts {
            readiness: Arc::new(AlwaysReady),
            backend,
            pseudonymiser: pseudonymiser.clone(),
            tokens,
            audit: AuditLog::open(&audit).expect("audit"),
            calendar: Calendar::amsterdam(),
            config,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = meterstand_api::serve(listener, state, s).await;
        });
        Server {
            addr,
            http: reqwest::Client::new(),
            store,
            pseudonymiser,
            audit,
            calendar: Calendar::amsterdam(),
            stop,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        role: Option<Role>,
        body: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr));
        if let Some(r) = role {
            req = req.bearer_auth(token(r));
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        (status, resp.text().await.expect("body"))
    }

    async fn json(&self, method: Method, path: &str, role: Role, body: Option<&str>) -> Value {
        let (status, text) = self.call(method, path, Some(role), body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
        serde_json::from_str(&text).expect("json")
    }

    fn local_midnight(&self, day: i8) -> Timestamp {
        self.calendar
            .date_start(date(2026, 11, day))
            .expect("midnight")
    }

    /// Day readings on `days`: import tariff 1 rises 10 kWh per day plus `extra` Wh from
    /// `base`; tariff 2 stays put (consumption needs both registers of a kind).
    async fn write_days(&self, e: &Ean, days: &[i8], base: u64, extra: u64) {
        let mut readings = Vec::new();
        for (i, d) in days.iter().enumerate() {
            let t = self.local_midnight(*d);
            for (register, value) in [
                (Register::ImportT1, base + (i as u64) * (10_000 + extra)),
                (Register::ImportT2, 3_000_000),
            ] {
                readings.push(TieredReading {
                    reading: Reading {
                        register,
                        time: t,
                        value,
                    },
                    tiers: self.calendar.tiers_of(register, t),
                });
            }
        }
        let item = IngestItem {
            connection: self.pseudonymiser.ean(e),
            previous: Vec::new(),
            meter: self
                .pseudonymiser
                .meter(&"E0031003262764316".parse().expect("meter")),
            readings,
        };
        ReadingWriter::write(self.store.as_ref(), vec![item])
            .await
            .expect("write");
    }

    fn register(&self, e: &Ean, consent: ConsentLevel, postcode: u16, profile: &str) {
        // The store's blocking calls must not run on an async worker as such.
        tokio::task::block_in_place(|| self.register_blocking(e, consent, postcode, profile));
    }

    fn register_blocking(&self, e: &Ean, consent: ConsentLevel, postcode: u16, profile: &str) {
        ReadingStore::put_connection(
            self.store.as_ref(),
            &[self.pseudonymiser.ean(e)],
            Connection {
                consent,
                postcode4: Some(meterstand_model::Postcode4::new(postcode).expect("pc")),
                profile: Some(profile.parse().expect("profile")),
            },
        )
        .expect("put");
    }

    fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit json"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const AGG: &str = "/v1/aggregates?from=2026-11-01&to=2026-11-04&granularity=day&register=import";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_admits_exactly_its_roles() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(1);
    s.register(&e, ConsentLevel::Daily, 1000, "E1A");
    s.write_days(&e, &[1, 2], 1_000_000, 0).await;
    let p = s.pseudonymiser.ean(&e);
    let series = format!("/v1/series/{p}?from=2026-11-01&to=2026-11-03");
    let conn = format!("/v1/connections/{}", ean(2).expose());
    let export = format!("/v1/subjects/{}/export", e.expose());
    let erase = format!("/v1/subjects/{}", ean(3).expose());
    let body = r#"{"consent":"daily","postcode4":"1000","profile":"E1A"}"#;
    let backup_body = format!(r#"{{"to":"{}"}}"#, s.dir().join("backup").display());
    let cases: Vec<(Method, &str, Option<&str>, Option<Role>)> = vec![
        (Method::GET, AGG, None, Some(Role::Analyst)),
        (Method::GET, &series, None, Some(Role::Analyst)),
        (Method::PUT, &conn, Some(body), Some(Role::Crm)),
        (Method::GET, &export, None, Some(Role::PrivacyOfficer)),
        (Method::DELETE, &erase, None, Some(Role::PrivacyOfficer)),
        (Method::GET, "/metrics", None, Some(Role::Operator)),
        (
            Method::POST,
            "/v1/backups",
            Some(&backup_body),
            Some(Role::Operator),
        ),
        (Method::GET, "/healthz", None, None),
        (Method::GET, "/readyz", None, None),
        (Method::GET, "/openapi.json", None, None),
    ];
    for (method, path, body, allowed) in &cases {
        let mut callers: Vec<Option<Role>> = vec![None];
        callers.extend(Role::ALL.map(Some));
        for caller in callers {
            let (status, text) = s.call(method.clone(), path, caller, *body).await;
            let expected = match (allowed, caller) {
                (None, _) => StatusCode::OK,
                (Some(_), None) => StatusCode::UNAUTHORIZED,
                (Some(a), Some(c)) if *a == c => StatusCode::OK,
                (Some(_), Some(_)) => StatusCode::FORBIDDEN,
            };
            assert_eq!(status, expected, "{method} {path} as {caller:?}: {text}");
            if status != StatusCode::OK {
                let v: Value = serde_json::from_str(&text).expect("json error");
                assert!(v["error"]["code"].is_string(), "{text}");
            }
        }
    }
    // A token that is not configured is no token.
    let resp = s
        .http
        .get(format!("http://{}{AGG}", s.addr))
        .bearer_auth("test-token-analysT")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_suppress_groups_under_the_minimum_size() {
    let s = Server::start(ApiConfig::default()).await;
    // 10 connections in 1000, 9 in 2000, 9 in 3000: the two nines hide each other.
    let mut n = 0;
    for (postcode, count) in [(1000u16, 10u64), (2000, 9), (3000, 9)] {
        for i in 0..count {
            n += 1;
            let e = ean(100 + n);
            s.register(&e, ConsentLevel::Daily, postcode, "E1A");
            s.write_days(&e, &[1, 2, 3, 4], 5_000_000 * n, i).await;
        }
    }
    let v = s
        .json(
            Method::GET,
            &format!("{AGG}&group_by=postcode4"),
            Role::Analyst,
            None,
        )
        .await;
    assert_eq!(v["unit"], "Wh");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 9, "3 days x 3 postcodes: {v}");
    for row in rows {
        let pc = row["group"]["postcode4"].as_str().expect("postcode");
        if pc == "1000" {
            assert_eq!(row["suppressed"], false);
            assert_eq!(row["connections"], 10);
            // 10 connections x (10 kWh + i Wh), i = 0..9: 100 kWh + 45 Wh.
            assert_eq!(row["consumption"], 100_045);
        } else {
            assert_eq!(row["suppressed"], true, "{row}");
            assert!(row["connections"].is_null() && row["consumption"].is_null());
        }
    }
    assert_eq!(v["suppressed_cells"], 6);

    // Without grouping, one cell of 28 connections per day.
    let v = s.json(Method::GET, AGG, Role::Analyst, None).await;
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r["connections"] == 28 && r["suppressed"] == false)
    );
    assert_eq!(rows[0]["group"], json!({}));

    // CSV has the same columns.
    let (status, csv) = s
        .call(
            Method::GET,
            &format!("{AGG}&group_by=postcode4&format=csv"),
            Some(Role::Analyst),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("period_start,postcode4,connections,consumption,suppressed,unit")
    );
    assert!(csv.contains(",1000,10,100045,false,Wh"));
    assert!(csv.contains(",2000,,,true,Wh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_error() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(7);
    s.register(&e, ConsentLevel::Daily, 1000, "E1A");
    s.write_days(&e, &[1, 2, 3], 1_000, 0).await;
    let p = s.pseudonymiser.ean(&e);
    let unknown = s.pseudonymiser.ean(&ean(8));
    let a = Some(Role::Analyst);
    let bad_check = "871687120000000010";
    // (method, path, role, body, status, error code)
    type Case<'a> = (Method, String, Option<Role>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/aggregates?from=2026-11-01&to=soon".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/aggregates?from=2026-11-05&to=2026-11-01".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/aggregates?to=2026-11-01".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            format!("{AGG}&granularity=week"),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/aggregates?from=2026-11-01&to=2026-11-02&granularity=week".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/aggregates?from=2026-11-01&to=2026-11-02&register=water".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/aggregates?from=2026-11-01&to=2026-11-02&group_by=pseudonym".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/aggregates?from=2026-11-01&to=2026-11-02&ean=1".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/aggregates?from=2026-01-01&to=2026-11-01&granularity=interval".into(),
            a,
            None,
            400,
            "range_too_large",
        ),
        (
            Method::GET,
            "/v1/aggregates?from=2020-01-01&to=2026-11-01&granularity=day".into(),
            a,
            None,
            400,
            "range_too_large",
        ),
        (
            Method::GET,
            format!("/v1/series/{unknown}?from=2026-11-01&to=2026-11-03"),
            a,
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/series/v1-nothex?from=2026-11-01&to=2026-11-03".into(),
            a,
            None,
            400,
            "bad_pseudonym",
        ),
        (
            Method::GET,
            format!("/v1/series/{p}?from=2026-11-01&to=2026-11-03&granularity=year"),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::PUT,
            format!("/v1/connections/{bad_check}"),
            Some(Role::Crm),
            Some(r#"{"consent":"daily"}"#),
            400,
            "bad_ean",
        ),
        (
            Method::PUT,
            format!("/v1/connections/{}", e.expose()),
            Some(Role::Crm),
            Some(r#"{"consent":"always"}"#),
            400,
            "bad_request",
        ),
        (
            Method::PUT,
            format!("/v1/connections/{}", e.expose()),
            Some(Role::Crm),
            Some(r#"{"consent":"daily","postcode4":"0999"}"#),
            400,
            "bad_request",
        ),
        (
            Method::PUT,
            format!("/v1/connections/{}", e.expose()),
            Some(Role::Crm),
            Some(r#"{"consent":"daily","name":"x"}"#),
            400,
            "bad_request",
        ),
        (
            Method::PUT,
            format!("/v1/connections/{}", e.expose()),
            Some(Role::Crm),
            Some("{not json"),
            400,
            "bad_request",
        ),
        (
            Method::GET,
            format!("/v1/subjects/{bad_check}/export"),
            Some(Role::PrivacyOfficer),
            None,
            400,
            "bad_ean",
        ),
        (
            Method::GET,
            format!("/v1/subjects/{}/export?format=xml", e.expose()),
            Some(Role::PrivacyOfficer),
            None,
            400,
            "bad_request",
        ),
        (
            Method::DELETE,
            "/v1/subjects/12345".into(),
            Some(Role::PrivacyOfficer),
            None,
            400,
            "bad_ean",
        ),
        (Method::GET, "/v1/nothing".into(), a, None, 404, "not_found"),
    ];
    for (method, path, role, body, status, code) in cases {
        let (got, text) = s.call(method.clone(), &path, role, body).await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).expect("json error");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {text}");
        assert!(
            !text.contains(bad_check) && !text.contains(e.expose()),
            "identifier echoed: {text}"
        );
    }
    let o = Some(Role::Operator);
    let existing = format!(r#"{{"to":"{}"}}"#, s.dir().display());
    for (body, code) in [
        (r#"{"to":"relative/dir"}"#, "bad_request"),
        (existing.as_str(), "bad_request"),
        (r#"{"into":"/tmp/x"}"#, "bad_request"),
    ] {
        let (got, text) = s.call(Method::POST, "/v1/backups", o, Some(body)).await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).expect("json error");
        assert_eq!(v["error"]["code"], code);
    }
    // A body over the limit.
    let big = format!(
        r#"{{"consent":"daily","profile":"{}"}}"#,
        "x".repeat(20_000)
    );
    let (got, text) = s
        .call(
            Method::PUT,
            &format!("/v1/connections/{}", e.expose()),
            Some(Role::Crm),
            Some(&big),
        )
        .await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json error");
    assert_eq!(v["error"]["code"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_gives_one_pseudonymous_connection() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(9);
    s.register(&e, ConsentLevel::Daily, 1000, "E1A");
    s.write_days(&e, &[1, 2, 3], 1_000, 500).await;
    let p = s.pseudonymiser.ean(&e);
    let v = s
        .json(
            Method::GET,
            &format!("/v1/series/{p}?from=2026-11-01&to=2026-11-03&granularity=day"),
            Role::Analyst,
            None,
        )
        .await;
    assert_eq!(v["pseudonym"], p.to_string());
    assert_eq!(v["unit"], "Wh");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["consumption"], 10_500);
    assert_eq!(rows[0]["period_start"], s.local_midnight(1).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_erasure_consent_and_audit() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(11);
    let put = format!("/v1/connections/{}", e.expose());
    let v = s
        .json(
            Method::PUT,
            &put,
            Role::Crm,
            Some(r#"{"consent":"interval","postcode4":"1234","profile":"E1A"}"#),
        )
        .await;
    let p = s.pseudonymiser.ean(&e);
    assert_eq!(v["pseudonym"], p.to_string());
    assert!(v["removed"].is_null());
    // Readings on Nov 1 (a month boundary: day and month tier) and Nov 2, 3.
    s.write_days(&e, &[1, 2, 3], 7_000_000, 0).await;

    let export = format!("/v1/subjects/{}/export", e.expose());
    let v = s
        .json(Method::GET, &export, Role::PrivacyOfficer, None)
        .await;
    assert_eq!(v["connection"]["consent"], "interval");
    assert_eq!(v["connection"]["postcode4"], "1234");
    assert_eq!(v["meters"].as_array().map(Vec::len), Some(1));
    let day = v["readings"]["day"].as_array().expect("day");
    assert_eq!(day.len(), 6);
    assert_eq!(day[0]["obis"], "1-0:1.8.1");
    assert_eq!(day[0]["value"], "7000.000");
    assert_eq!(day[0]["unit"], "kWh");
    assert_eq!(day[2]["value"], "7010.000");
    assert_eq!(v["readings"]["month"].as_array().map(Vec::len), Some(2));
    let (status, csv) = s
        .call(
            Method::GET,
            &format!("{export}?format=csv"),
            Some(Role::PrivacyOfficer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        csv.starts_with("record,pseudonym,tier,obis,time,value,unit,consent,postcode4,profile\n")
    );
    assert!(csv.contains(&format!("connection,{p},,,,,,interval,1234,E1A")));
    // Midnight readings are interval, day (and on the 1st month) readings alike: 6 + 6 + 2.
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("reading,")).count(),
        14
    );

    // Lowering consent to standard removes the day readings, with a receipt.
    let v = s
        .json(
            Method::PUT,
            &put,
            Role::Crm,
            Some(r#"{"consent":"standard","postcode4":"1234"}"#),
        )
        .await;
    assert_eq!(v["removed"]["deleted"]["day"], 6, "{v}");
    assert_eq!(v["removed"]["deleted"]["interval"], 6, "{v}");
    assert_eq!(v["removed"]["deleted"]["month"], 0);

    // Erasure: everything but the held month reading goes.
    let v = s
        .json(
            Method::DELETE,
            &format!("/v1/subjects/{}", e.expose()),
            Role::PrivacyOfficer,
            None,
        )
        .await;
    assert_eq!(v["pseudonym"], p.to_string());
    assert_eq!(v["deleted"]["connection"], 1);
    assert_eq!(v["deleted"]["month"], 0);
    let kept = v["kept"].as_array().expect("kept");
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["tier"], "month");
    assert_eq!(kept[0]["count"], 2);
    assert!(
        kept[0]["reason"]
            .as_str()
            .expect("reason")
            .contains("fiscal")
    );
    assert!(
        kept[0]["until"]
            .as_str()
            .expect("until")
            .starts_with("2033-"),
        "{v}"
    );

    let v = s
        .json(Method::GET, &export, Role::PrivacyOfficer, None)
        .await;
    assert!(v["connection"].is_null());
    assert_eq!(v["meters"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["readings"]["interval"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["readings"]["day"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["readings"]["month"].as_array().map(Vec::len), Some(2));

    // A refused call is audited too.
    let (status, _) = s
        .call(Method::GET, &export, Some(Role::Analyst), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let lines = s.audit_lines();
    let summary: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap_or("").to_string(),
                l["role"].as_str().unwrap_or("-").to_string(),
                l["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expect = |a: &str, r: &str, o: &str| (a.to_string(), r.to_string(), o.to_string());
    assert_eq!(
        summary,
        vec![
            expect("connection.put", "crm", "ok"),
            expect("subject.export", "privacy_officer", "ok"),
            expect("subject.export", "privacy_officer", "ok"),
            expect("connection.put", "crm", "ok"),
            expect("subject.erase", "privacy_officer", "ok"),
            expect("subject.export", "privacy_officer", "ok"),
            expect("subject.export", "analyst", "denied"),
        ]
    );
    assert!(lines[..6].iter().all(|l| l["pseudonym"] == p.to_string()));
    assert!(lines[6]["pseudonym"].is_null());
    assert_eq!(lines[0]["token_id"], "crm-1");
    assert!(lines.iter().all(|l| {
        l["time"]
            .as_str()
            .is_some_and(|t| t.parse::<Timestamp>().is_ok())
    }));
    let raw = std::fs::read_to_string(&s.audit).expect("audit");
    assert!(!raw.contains(e.expose()), "the audit log holds the EAN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_refused_not_queued() {
    let config = ApiConfig {
        max_concurrent: 1,
        ..ApiConfig::default()
    };
    let s = Arc::new(Server::start(config).await);
    let (entered, release) = s.store.pause_next_aggregate();
    let first = {
        let s = s.clone();
        tokio::spawn(async move { s.call(Method::GET, AGG, Some(Role::Analyst), None).await })
    };
    // The first request now holds the only permit, inside the store.
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("the first request reaches the store");
    let (status, text) = s.call(Method::GET, AGG, Some(Role::Analyst), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["error"]["code"], "overloaded");
    release.send(()).expect("release");
    let (status, _) = first.await.expect("first");
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.call(Method::GET, AGG, Some(Role::Analyst), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route() {
    let s = Server::start(ApiConfig::default()).await;
    let (status, text) = s.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert!(v["openapi"].as_str().expect("version").starts_with("3."));
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/aggregates", "get"),
        ("/v1/series/{pseudonym}", "get"),
        ("/v1/connections/{ean}", "put"),
        ("/v1/subjects/{ean}/export", "get"),
        ("/v1/subjects/{ean}", "delete"),
        ("/v1/backups", "post"),
    ] {
        assert!(
            v["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    assert_eq!(v["paths"].as_object().map(|m| m.len()), Some(10));
    assert!(v["components"]["securitySchemes"]["bearer"].is_object());
    let params = v["paths"]["/v1/aggregates"]["get"]["parameters"]
        .as_array()
        .expect("params");
    let names: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "from",
            "to",
            "granularity",
            "register",
            "group_by",
            "format"
        ]
    );
}
