//! The API over HTTP: a real server on 127.0.0.1:0 over the in-memory store (held to the
//! RocksDB engine's behaviour by the store's conformance suite), driven by a real HTTP client.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::date;
use meterstand_api::{ApiConfig, ApiState, Role, TokenTable, hash_token};
use meterstand_model::{Calendar, Connection, ConsentLevel, Ean, Reading, Register, TieredReading};
use meterstand_pseudonym::Pseudonymiser;
use meterstand_store::{IngestItem, MemStore, ReadingStore, ReadingWriter};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use common::{Fixture, token, token_table};

struct Server {
    addr: SocketAddr,
    state: ApiState,
    tag: String,
    http: reqwest::Client,
    store: Arc<MemStore>,
    pseudonymiser: Arc<Pseudonymiser>,
    audit: PathBuf,
    calendar: Calendar,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn ean(n: u64) -> Ean {
    meterstand_testkit::ean_from(6, n)
}

const NOW: &str = "2026-11-20T12:00:00Z";

impl Server {
    async fn start(config: ApiConfig) -> Server {
        Server::start_tagged(config, "1").await
    }

    /// `tag` makes the token ids (`analyst-<tag>`) unique to one test, so that per-token
    /// metrics are not shared with tests running alongside.
    async fn start_tagged(config: ApiConfig, tag: &str) -> Server {
        let f = Fixture::new(config, NOW.parse().expect("now"), tag);
        let stop = CancellationToken::new();
        let addr = f.serve(None, stop.clone()).await;
        Server {
            addr,
            state: f.state,
            tag: tag.to_string(),
            http: reqwest::Client::new(),
            store: f.store,
            pseudonymiser: f.ps,
            audit: f.audit,
            calendar: Calendar::amsterdam(),
            stop,
            _dir: f.dir,
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
            correction: false,
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

    /// Runs the freeze job as the service does (48 h settle) at the store's clock
    /// (2026-11-20), without waiting for `statistics.quiet` after the tests' writes.
    fn freeze(&self) {
        let store = self.store.clone();
        tokio::task::block_in_place(|| {
            meterstand_store::freeze::run(
                store.as_ref(),
                &self.calendar,
                &meterstand_store::freeze::FreezeConfig {
                    quiet: Duration::ZERO,
                    ..Default::default()
                },
                NOW.parse().expect("now"),
            )
            .expect("freeze");
        });
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

const AGG: &str = "/v1/statistics?from=2026-11-01&to=2026-11-04&granularity=day&register=import";

/// What a route open to `allowed` (`None`: anyone) answers `caller` (`None`: no token).
fn expected_status(allowed: Option<Role>, caller: Option<Role>) -> StatusCode {
    match (allowed, caller) {
        (None, _) => StatusCode::OK,
        (Some(_), None) => StatusCode::UNAUTHORIZED,
        (Some(a), Some(c)) if a == c => StatusCode::OK,
        (Some(_), Some(_)) => StatusCode::FORBIDDEN,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_admits_exactly_its_roles() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(1);
    s.register(&e, ConsentLevel::Daily, 1000, "E1A");
    s.write_days(&e, &[1, 2], 1_000_000, 0).await;
    let conn = format!("/v1/connections/{}", ean(2).expose());
    let export = format!("/v1/subjects/{}/export", e.expose());
    let erase = format!("/v1/subjects/{}", ean(3).expose());
    let objection = format!("/v1/subjects/{}/objection", ean(4).expose());
    let body = r#"{"consent":"daily","postcode4":"1000","profile":"E1A"}"#;
    let backup_body = r#"{"name":"nightly-1"}"#.to_string();
    let cases: Vec<(Method, &str, Option<&str>, Option<Role>)> = vec![
        (Method::GET, AGG, None, Some(Role::Analyst)),
        (Method::PUT, &conn, Some(body), Some(Role::Crm)),
        (Method::GET, &export, None, Some(Role::PrivacyOfficer)),
        (Method::DELETE, &erase, None, Some(Role::PrivacyOfficer)),
        (Method::PUT, &objection, None, Some(Role::PrivacyOfficer)),
        (Method::DELETE, &objection, None, Some(Role::PrivacyOfficer)),
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
            let expected = expected_status(*allowed, caller);
            assert_eq!(status, expected, "{method} {path} as {caller:?}: {text}");
            if status != StatusCode::OK {
                let v: Value = serde_json::from_str(&text).expect("json error");
                assert!(v["error"]["code"].is_string(), "{text}");
            }
        }
    }
    // HEAD runs the GET handler (axum): it meets the GET route's roles, so a HEAD of an
    // export without the privacy officer's token reveals nothing, not even its size.
    for (method, path, _, allowed) in cases.iter().filter(|c| c.0 == Method::GET) {
        let mut callers: Vec<Option<Role>> = vec![None];
        callers.extend(Role::ALL.map(Some));
        for caller in callers {
            let (status, _) = s.call(Method::HEAD, path, caller, None).await;
            let expected = expected_status(*allowed, caller);
            assert_eq!(status, expected, "HEAD (as {method}) {path} as {caller:?}");
        }
    }
    // A method the table does not list for a path is refused before any handler, for
    // every caller, and leaves no audit line.
    let lines_before = s.audit_lines().len();
    for (method, path) in [
        (Method::PATCH, "/v1/backups"),
        (Method::GET, "/v1/backups"),
        (Method::POST, AGG),
        (Method::GET, erase.as_str()),
        (Method::POST, objection.as_str()),
        (Method::OPTIONS, export.as_str()),
    ] {
        for caller in [None, Some(Role::Operator), Some(Role::PrivacyOfficer)] {
            let (status, _) = s.call(method.clone(), path, caller, None).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} as {caller:?}"
            );
        }
    }
    assert_eq!(s.audit_lines().len(), lines_before);
    // The scheme name is case-insensitive; the token is not.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = s
            .http
            .get(format!("http://{}{AGG}", s.addr))
            .header(
                "authorization",
                format!("{scheme} {}", token(Role::Analyst)),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
    }
    let resp = s
        .http
        .get(format!("http://{}{AGG}", s.addr))
        .header("authorization", format!("Basic {}", token(Role::Analyst)))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
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
async fn statistics_publish_frozen_rows_of_at_least_k() {
    let s = Server::start(ApiConfig::default()).await;
    // 10 connections in 1000, 9 in 2000, 9 in 3000: the nines merge into the remainder.
    let mut n = 0;
    for (postcode, count) in [(1000u16, 10u64), (2000, 9), (3000, 9)] {
        for i in 0..count {
            n += 1;
            let e = ean(100 + n);
            s.register(&e, ConsentLevel::Daily, postcode, "E1A");
            s.write_days(&e, &[1, 2, 3, 4], 5_000_000 * n, i).await;
        }
    }
    let query = format!("{AGG}&group_by=postcode4");
    let v = s.json(Method::GET, &query, Role::Analyst, None).await;
    assert_eq!(v["rows"], json!([]), "nothing is frozen yet");
    s.freeze();
    let v = s.json(Method::GET, &query, Role::Analyst, None).await;
    assert_eq!(v["unit"], "Wh");
    assert_eq!(v["periods"], 3);
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 6, "3 days x (1000, rest): {v}");
    for row in rows {
        match row["group"]["area"].as_str().expect("area") {
            "1000" => {
                assert_eq!(row["connections"], 10);
                // 10 connections x (10 kWh + i Wh), i = 0..9: 100 kWh + 45 Wh.
                assert_eq!(row["consumption"], 100_045);
            }
            "rest" => assert_eq!(row["connections"], 18),
            other => panic!("unexpected area {other}: {v}"),
        }
    }
    // The rows themselves say what they cover.
    let v = s
        .json(
            Method::GET,
            &format!("{AGG}&group_by=postcode4,profile"),
            Role::Analyst,
            None,
        )
        .await;
    assert_eq!(
        v["rows"][0]["group"],
        json!({"area": "1000", "profile": "E1A"})
    );
    assert_eq!(
        v["rows"][1]["group"],
        json!({"area": "rest", "profile": "*"})
    );
    // Without grouping, one row of 28 connections per day.
    let v = s.json(Method::GET, AGG, Role::Analyst, None).await;
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["connections"] == 28));
    assert_eq!(rows[0]["group"], json!({}));

    // CSV has the same figures.
    let (status, csv) = s
        .call(
            Method::GET,
            &format!("{query}&format=csv"),
            Some(Role::Analyst),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("period_start,area,profile,connections,consumption,unit")
    );
    assert!(csv.contains(",1000,,10,100045,Wh"), "{csv}");
    // The retired endpoint says where to go.
    let (status, text) = s
        .call(
            Method::GET,
            "/v1/aggregates?from=2026-11-01&to=2026-11-04",
            Some(Role::Analyst),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::GONE, "{text}");
    assert!(text.contains("/v1/statistics"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_error() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(7);
    s.register(&e, ConsentLevel::Daily, 1000, "E1A");
    s.write_days(&e, &[1, 2, 3], 1_000, 0).await;
    let a = Some(Role::Analyst);
    let bad_check = "871687120000000010";
    // (method, path, role, body, status, error code)
    type Case<'a> = (Method, String, Option<Role>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/statistics?from=2026-11-01&to=soon".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/statistics?from=2026-11-05&to=2026-11-01".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/statistics?to=2026-11-01".into(),
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
            "/v1/statistics?from=2026-11-01&to=2026-11-02&granularity=week".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/statistics?from=2026-11-01&to=2026-11-02&register=water".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/statistics?from=2026-11-01&to=2026-11-02&group_by=pseudonym".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/statistics?from=2026-11-01&to=2026-11-02&ean=1".into(),
            a,
            None,
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/statistics?from=2026-01-01&to=2026-11-01&granularity=interval".into(),
            a,
            None,
            400,
            "range_too_large",
        ),
        (
            Method::GET,
            "/v1/statistics?from=2020-01-01&to=2026-11-01&granularity=day".into(),
            a,
            None,
            400,
            "range_too_large",
        ),
        (
            Method::GET,
            "/v1/series/a1-nothex?from=2026-11-01&to=2026-11-03&granularity=year".into(),
            a,
            None,
            410,
            "retired",
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
        (
            Method::PUT,
            format!("/v1/subjects/{bad_check}/objection"),
            Some(Role::PrivacyOfficer),
            None,
            400,
            "bad_ean",
        ),
        (
            Method::DELETE,
            "/v1/subjects/12345/objection".into(),
            Some(Role::PrivacyOfficer),
            None,
            400,
            "bad_ean",
        ),
        (
            Method::PUT,
            format!("/v1/connections/{}", e.expose()),
            Some(Role::Crm),
            Some(r#"{"consent":"daily","analytics":true}"#),
            400,
            "bad_request",
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
    // Backups are confined to the configured directory: a name, never a path; an existing
    // backup (or RocksDB's scratch `<name>.tmp`, which it would empty) is not overwritten.
    let (first, text) = s
        .call(Method::POST, "/v1/backups", o, Some(r#"{"name":"b1"}"#))
        .await;
    assert_eq!(first, StatusCode::OK, "{text}");
    let made = s.dir().join("backups").join("b1");
    assert!(made.is_dir(), "the backup is a child of backup.dir");
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&s.dir().join("backups")), 0o700);
    std::fs::create_dir_all(s.dir().join("backups").join("b2.tmp")).expect("scratch");
    for (body, status, code) in [
        (
            r#"{"name":"../escape"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"name":"/tmp/abs"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"name":".hidden"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (r#"{"name":"b1"}"#, StatusCode::CONFLICT, "conflict"),
        (r#"{"name":"b2"}"#, StatusCode::CONFLICT, "conflict"),
        (r#"{"to":"/tmp/x"}"#, StatusCode::BAD_REQUEST, "bad_request"),
    ] {
        let (got, text) = s.call(Method::POST, "/v1/backups", o, Some(body)).await;
        assert_eq!(got, status, "{body}: {text}");
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
    assert!(csv.starts_with(
        "record,pseudonym,tier,obis,time,value,unit,consent,postcode4,profile,corrected_at,\
         objection,erased,sealed_before\n"
    ));
    assert!(csv.contains(&format!("connection,{p},,,,,,interval,1234,E1A,,,,\n")));
    assert!(
        csv.contains(&format!("state,{p},,,,,,,,,,false,false,\n")),
        "{csv}"
    );
    assert_eq!(v["objection"], false);
    assert_eq!(v["erased"], false);
    assert!(v["sealed_before"].is_null());
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
    assert_eq!(v["erased"], true, "{v}");
    assert_eq!(
        v["sealed_before"], NOW,
        "the kept month readings serve billing only"
    );
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
                l["actor"]["role"].as_str().unwrap_or("-").to_string(),
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
            expect("auth.refused", "analyst", "denied"),
        ]
    );
    assert!(
        lines[..6]
            .iter()
            .all(|l| l["subjects"] == json!([p.to_string()]))
    );
    assert_eq!(lines[6]["subjects"], json!([]));
    assert_eq!(lines[6]["route"], "/v1/subjects/{ean}/export");
    assert_eq!(lines[0]["actor"]["token_id"], "crm-1");
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
    let (entered, release) = s.store.pause_next_statistics();
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
        ("/v1/statistics", "get"),
        ("/v1/connections/{ean}", "put"),
        ("/v1/subjects/{ean}/export", "get"),
        ("/v1/subjects/{ean}", "delete"),
        ("/v1/subjects/{ean}/objection", "put"),
        ("/v1/subjects/{ean}/objection", "delete"),
        ("/v1/backups", "post"),
    ] {
        assert!(
            v["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    assert_eq!(v["paths"].as_object().map(|m| m.len()), Some(10));
    for retired in [
        "/v1/aggregates",
        "/v1/series",
        "/v1/series/{id}",
        "/v1/series/{analyst_id}",
    ] {
        assert!(
            v["paths"][retired].is_null(),
            "the retired endpoint {retired} is not documented"
        );
    }
    for schema in ["SeriesResponse", "SeriesListResponse", "SeriesRowOut"] {
        assert!(v["components"]["schemas"][schema].is_null(), "{schema}");
    }
    assert!(v["components"]["securitySchemes"]["bearer"].is_object());
    let params = v["paths"]["/v1/statistics"]["get"]["parameters"]
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
    // Every parameter carries its real constraint.
    let param = |path: &str, method: &str, name: &str| -> Value {
        v["paths"][path][method]["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
    };
    let enumeration = |p: &Value| -> Vec<String> {
        let schema = &p["schema"];
        let values = schema["enum"]
            .as_array()
            .or_else(|| {
                schema["oneOf"]
                    .as_array()
                    .and_then(|o| o.iter().find_map(|s| s["enum"].as_array()))
            })
            .unwrap_or_else(|| panic!("no enum: {p}"));
        values
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    for (path, method) in [
        ("/v1/connections/{ean}", "put"),
        ("/v1/subjects/{ean}/export", "get"),
        ("/v1/subjects/{ean}", "delete"),
        ("/v1/subjects/{ean}/objection", "put"),
        ("/v1/subjects/{ean}/objection", "delete"),
    ] {
        let ean = param(path, method, "ean");
        assert_eq!(ean["schema"]["pattern"], "^[0-9]{18}$", "{path}");
        assert_eq!(ean["required"], true);
    }
    for path in ["/v1/statistics"] {
        assert_eq!(
            enumeration(&param(path, "get", "granularity")),
            ["interval", "day", "month"]
        );
        assert_eq!(
            enumeration(&param(path, "get", "register")),
            ["import", "export", "gas"]
        );
        assert_eq!(
            enumeration(&param(path, "get", "format")),
            ["json", "csv", "parquet"]
        );
        // One enum for both: the same rows in the same formats.
        assert_eq!(
            param(path, "get", "format")["schema"],
            param("/v1/statistics", "get", "format")["schema"]
        );
        let content = &v["paths"][path]["get"]["responses"]["200"]["content"];
        let media: Vec<&str> = content
            .as_object()
            .expect("content")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            media,
            [
                "application/json",
                "application/vnd.apache.parquet",
                "text/csv"
            ],
            "{path}"
        );
        let parquet = &content["application/vnd.apache.parquet"]["schema"];
        let parquet = match parquet["$ref"].as_str() {
            Some(r) => &v["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
            None => parquet,
        };
        assert_eq!(parquet["type"], "string", "{path}: {parquet}");
        assert_eq!(
            parquet["contentMediaType"], "application/vnd.apache.parquet",
            "{path}: {parquet}"
        );
        for name in ["from", "to"] {
            let p = param(path, "get", name);
            assert_eq!(p["required"], true);
            let formats: Vec<&str> = p["schema"]["oneOf"]
                .as_array()
                .unwrap_or_else(|| panic!("{p}"))
                .iter()
                .filter_map(|s| s["format"].as_str())
                .collect();
            assert_eq!(formats, ["date-time", "date"], "{path} {name}");
        }
    }
    assert!(
        param("/v1/statistics", "get", "group_by")["schema"]["pattern"]
            .as_str()
            .is_some_and(|p| p.contains("postcode4") && p.contains("profile"))
    );
    assert_eq!(
        enumeration(&param("/v1/subjects/{ean}/export", "get", "format")),
        ["json", "csv"]
    );
    let body = &v["components"]["schemas"]["ConnectionBody"]["properties"];
    assert!(body["postcode4"]["pattern"].is_string(), "{body}");
    assert!(body["profile"]["pattern"].is_string(), "{body}");
    assert!(
        body["consent"]["enum"].is_array() || body["consent"]["oneOf"][0]["enum"].is_array(),
        "{body}"
    );
    assert!(
        body["analytics"].is_null(),
        "the objection is not the CRM's: {body}"
    );
    for schema in ["ConnectionOut", "ExportResponse", "ObjectionResponse"] {
        let properties = &v["components"]["schemas"][schema]["properties"];
        assert!(properties["analytics"].is_null(), "{schema}: {properties}");
    }
    for schema in ["ExportResponse", "ObjectionResponse"] {
        let properties = &v["components"]["schemas"][schema]["properties"];
        for field in ["objection", "erased", "sealed_before"] {
            assert!(
                properties[field].is_object(),
                "{schema}.{field}: {properties}"
            );
        }
    }
    // Every /v1 operation lists the refusals it can meet, with the error schema.
    for (path, method) in [
        ("/v1/statistics", "get"),
        ("/v1/connections/{ean}", "put"),
        ("/v1/subjects/{ean}/export", "get"),
        ("/v1/subjects/{ean}", "delete"),
        ("/v1/subjects/{ean}/objection", "put"),
        ("/v1/subjects/{ean}/objection", "delete"),
        ("/v1/backups", "post"),
    ] {
        for status in ["400", "401", "403", "404", "413", "503"] {
            let r = &v["paths"][path][method]["responses"][status];
            assert_eq!(
                r["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path} {status}: {r}"
            );
        }
    }
}

/// The value of one series in the `/metrics` exposition (0 when absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Server {
    async fn metrics(&self) -> String {
        let (status, text) = self
            .call(Method::GET, "/metrics", Some(Role::Operator), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        text
    }

    async fn raw(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_bodies_hold_no_place_and_do_not_starve_analysts() {
    let config = ApiConfig {
        max_concurrent: 64,
        body_timeout: Duration::from_secs(30),
        ..ApiConfig::default()
    };
    let s = Server::start(config).await;
    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    for i in 0..64u64 {
        let mut conn = s.raw().await;
        let stop = stop.clone();
        let head = format!(
            "PUT /v1/connections/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            ean(500 + i).expose(),
            token(Role::Crm)
        );
        clients.push(tokio::spawn(async move {
            conn.write_all(head.as_bytes()).await.expect("head");
            // One byte a second, for at most 20 seconds.
            for _ in 0..20 {
                if conn.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let (status, text) = s.call(Method::GET, AGG, Some(Role::Analyst), None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    stop.cancel();
    for c in clients {
        c.await.expect("client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_refused() {
    let config = ApiConfig {
        body_timeout: Duration::from_secs(1),
        ..ApiConfig::default()
    };
    let s = Server::start(config).await;
    let mut conn = s.raw().await;
    let head = format!(
        "PUT /v1/connections/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        ean(1).expose(),
        token(Role::Crm)
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    // The refusal is audited as the crm call it was.
    let lines = s.audit_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["action"], "connection.put");
    assert_eq!(lines[0]["status"], 408);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_its_headers_is_disconnected() {
    let config = ApiConfig {
        header_timeout: Duration::from_secs(1),
        ..ApiConfig::default()
    };
    let s = Server::start(config).await;
    let mut conn = s.raw().await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: lo")
        .await
        .expect("half a header");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still connected after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(800));
    // Other clients are served as before.
    let (status, _) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_stay_bounded_under_made_up_methods_and_paths() {
    let s = Server::start(ApiConfig::default()).await;
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("meterstand_api_requests_total{"))
            .count()
    };
    let before = series(&s.metrics().await);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut methods = Vec::new();
    for i in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = format!("M{:X}", seed & 0xff_ffff_ffff);
        methods.push(name.clone());
        let method = Method::from_bytes(name.as_bytes()).expect("method");
        let path = if i % 2 == 0 {
            "/v1/statistics".to_string()
        } else {
            format!("/random/{seed}")
        };
        let resp = s
            .http
            .request(method, format!("http://{}{path}", s.addr))
            .send()
            .await
            .expect("send");
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    let text = s.metrics().await;
    let after = series(&text);
    assert!(
        after <= before + 8,
        "{} new series for 200 made-up methods",
        after - before
    );
    assert!(methods.iter().all(|m| !text.contains(m.as_str())));
    assert!(!text.contains("/random/"));
    assert!(text.contains(r#"method="other",route="unmatched""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_echo_input() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(40);
    let put = format!("/v1/connections/{}", e.expose());
    let digits = "871687120000000001";
    let bodies = [
        format!(r#"{{"consent": {digits}}}"#),
        format!(r#"{{"consent": "{digits}"}}"#),
        format!(r#"{{"consent": "daily", "postcode4": {digits}}}"#),
        format!(r#"{{"consent": "daily", "postcode4": "{digits}"}}"#),
        format!(r#"{{"consent": "daily", "profile": "{digits}"}}"#),
        format!(r#"{{"consent": "daily", "analytics": {digits}}}"#),
        format!(r#"{{"consent": "daily", "analytics": "{digits}"}}"#),
        format!(r#"{{"consent": "daily", "{digits}": 1}}"#),
        format!(r#"{{"consent": ["{digits}"]}}"#),
        format!(r#"[{digits}]"#),
        format!(r#"{{"consent": {digits}"#),
        digits.to_string(),
        format!(r#"{{"consent": "daily" {digits}}}"#),
    ];
    let has_run = |text: &str| {
        let b = text.as_bytes();
        let mut run = 0;
        b.iter().any(|c| {
            run = if c.is_ascii_digit() { run + 1 } else { 0 };
            run >= 18
        })
    };
    for body in &bodies {
        let (status, text) = s.call(Method::PUT, &put, Some(Role::Crm), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(!has_run(&text), "{body} echoed: {text}");
        assert!(!text.contains("consent\": \"") && !text.contains(digits));
    }
    let backup = format!(r#"{{"name": {digits}}}"#);
    let (status, text) = s
        .call(
            Method::POST,
            "/v1/backups",
            Some(Role::Operator),
            Some(&backup),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!has_run(&text), "{text}");
    for query in [
        format!("/v1/statistics?from={digits}&to=2026-11-02"),
        format!("/v1/statistics?from=2026-11-01&to=2026-11-02&{digits}=1"),
        format!("/v1/statistics?from=2026-11-01&to=2026-11-02&granularity={digits}"),
        format!("/v1/statistics?from=2026-11-01&to=2026-11-02&register={digits}"),
        format!("/v1/statistics?from=2026-11-01&to=2026-11-02&group_by={digits}"),
        format!("/v1/statistics?from=2026-11-01&to=2026-11-02&format={digits}"),
        format!("/v1/statistics?from=2026-11-01&from={digits}&to=2026-11-02"),
    ] {
        let (status, text) = s.call(Method::GET, &query, Some(Role::Analyst), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {text}");
        assert!(!has_run(&text), "{query} echoed: {text}");
    }
    // The retired series answer the same whatever they are sent.
    for query in [
        format!("/v1/series/a1-{digits}?from=2026-11-01&to=2026-11-02"),
        format!("/v1/series?ean={digits}"),
    ] {
        let (status, text) = s.call(Method::GET, &query, Some(Role::Analyst), None).await;
        assert_eq!(status, StatusCode::GONE, "{query}: {text}");
        assert!(!has_run(&text), "{query} echoed: {text}");
    }
    let (status, text) = s
        .call(
            Method::GET,
            &format!("/v1/subjects/{}/export?format={digits}", e.expose()),
            Some(Role::PrivacyOfficer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!has_run(&text), "{text}");
    // None of these made it into the audit log either.
    let raw = std::fs::read_to_string(&s.audit).expect("audit");
    assert!(!raw.contains(digits) && !raw.contains(e.expose()));
    assert!(
        meterstand_audit::verify(&s.audit, None)
            .expect("verify")
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_token_table_refuses_a_revoked_token_at_once() {
    let s = Server::start_tagged(ApiConfig::default(), "swap").await;
    let (status, _) = s.call(Method::GET, AGG, Some(Role::Analyst), None).await;
    assert_eq!(status, StatusCode::OK);
    // Revoke the analyst token: the new table holds every other role.
    s.state.replace_tokens(token_table(
        &s.tag,
        &[Role::Crm, Role::PrivacyOfficer, Role::Operator],
    ));
    let (status, text) = s.call(Method::GET, AGG, Some(Role::Analyst), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    let (status, _) = s
        .call(Method::GET, "/metrics", Some(Role::Operator), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Put it back: accepted again, same server.
    s.state.replace_tokens(token_table(&s.tag, &Role::ALL));
    let (status, _) = s.call(Method::GET, AGG, Some(Role::Analyst), None).await;
    assert_eq!(status, StatusCode::OK);
    // An empty bearer value is no token.
    let resp = s
        .http
        .get(format!("http://{}{AGG}", s.addr))
        .header("authorization", "Bearer ")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(TokenTable::new([("empty", Role::Operator, hash_token("").as_str())]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_one_audit_line_without_identifiers() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(60);
    s.register(&e, ConsentLevel::Daily, 1000, "E1A");
    s.write_days(&e, &[1, 2], 1_000_000, 0).await;
    let p = s.pseudonymiser.ean(&e);
    let conn = format!("/v1/connections/{}", ean(61).expose());
    let export = format!("/v1/subjects/{}/export", e.expose());
    let erase = format!("/v1/subjects/{}", ean(62).expose());
    let objection = format!("/v1/subjects/{}/objection", ean(63).expose());
    let body = r#"{"consent":"daily","postcode4":"1000","profile":"E1A"}"#;
    let backup_body = r#"{"name":"backup-a"}"#.to_string();
    // (method, path, body, allowed role, route template, action)
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        Option<Role>,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            AGG,
            None,
            Some(Role::Analyst),
            "/v1/statistics",
            "statistics.read",
        ),
        (
            Method::PUT,
            &conn,
            Some(body),
            Some(Role::Crm),
            "/v1/connections/{ean}",
            "connection.put",
        ),
        (
            Method::GET,
            &export,
            None,
            Some(Role::PrivacyOfficer),
            "/v1/subjects/{ean}/export",
            "subject.export",
        ),
        (
            Method::DELETE,
            &erase,
            None,
            Some(Role::PrivacyOfficer),
            "/v1/subjects/{ean}",
            "subject.erase",
        ),
        (
            Method::PUT,
            &objection,
            None,
            Some(Role::PrivacyOfficer),
            "/v1/subjects/{ean}/objection",
            "subject.objection",
        ),
        (
            Method::GET,
            "/metrics",
            None,
            Some(Role::Operator),
            "/metrics",
            "metrics.read",
        ),
        (
            Method::POST,
            "/v1/backups",
            Some(&backup_body),
            Some(Role::Operator),
            "/v1/backups",
            "backup.create",
        ),
        (Method::GET, "/healthz", None, None, "/healthz", ""),
        (Method::GET, "/readyz", None, None, "/readyz", ""),
        (
            Method::GET,
            "/openapi.json",
            None,
            None,
            "/openapi.json",
            "",
        ),
    ];
    for (method, path, body, allowed, route, action) in &cases {
        let mut callers: Vec<Option<Role>> = vec![None];
        callers.extend(Role::ALL.map(Some));
        for caller in callers {
            let before = s.audit_lines().len();
            let (status, text) = s.call(method.clone(), path, caller, *body).await;
            let lines = s.audit_lines();
            let what = format!("{method} {path} as {caller:?}: {status} {text}");
            if allowed.is_none() {
                assert_eq!(lines.len(), before, "{what}");
                continue;
            }
            assert_eq!(lines.len(), before + 1, "exactly one line: {what}");
            let l = &lines[before];
            assert_eq!(l["route"], *route, "{what}");
            assert_eq!(l["status"], status.as_u16(), "{what}");
            assert!(
                l["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("127.0.0.1:")),
                "{what}: {l}"
            );
            match caller {
                None => {
                    assert_eq!(l["action"], "auth.refused", "{what}");
                    assert_eq!(l["actor"]["kind"], "unauthenticated", "{what}");
                }
                Some(c) if Some(c) == *allowed => {
                    assert_eq!(status, StatusCode::OK, "{what}");
                    assert_eq!(l["action"], *action, "{what}");
                    assert_eq!(l["outcome"], "ok");
                    assert_eq!(l["actor"]["token_id"], format!("{}-1", c.as_str()));
                    assert_eq!(l["actor"]["role"], c.as_str());
                }
                Some(c) => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                    assert_eq!(l["action"], "auth.refused", "{what}");
                    assert_eq!(l["outcome"], "denied");
                    assert_eq!(
                        l["actor"]["token_id"],
                        format!("{}-1", c.as_str()),
                        "{what}"
                    );
                }
            }
        }
    }
    // What each allowed call noted.
    let lines = s.audit_lines();
    let ok = |action: &str| {
        lines
            .iter()
            .find(|l| l["action"] == action && l["outcome"] == "ok")
            .cloned()
            .expect(action)
    };
    let agg = ok("statistics.read");
    assert_eq!(agg["params"]["granularity"], "day");
    assert_eq!(agg["params"]["register"], "import");
    assert!(agg["params"]["from"].as_str().is_some());
    assert_eq!(agg["rows"], 0, "nothing frozen: no rows");
    assert_eq!(agg["subjects"], json!([]));
    let objected = ok("subject.objection");
    assert_eq!(
        objected["subjects"],
        json!([s.pseudonymiser.ean(&ean(63)).to_string()])
    );
    assert_eq!(objected["params"], json!({"objection": "true"}));
    assert_eq!(ok("subject.export")["subjects"], json!([p.to_string()]));
    assert_eq!(
        ok("connection.put")["subjects"],
        json!([s.pseudonymiser.ean(&ean(61)).to_string()])
    );
    assert_eq!(
        ok("subject.erase")["subjects"],
        json!([s.pseudonymiser.ean(&ean(62)).to_string()])
    );
    // An unknown token is refused and audited as unauthenticated.
    let before = s.audit_lines().len();
    let resp = s
        .http
        .get(format!("http://{}{AGG}", s.addr))
        .bearer_auth("not-a-configured-token")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let lines = s.audit_lines();
    assert_eq!(lines.len(), before + 1);
    assert_eq!(lines[before]["actor"]["kind"], "unauthenticated");

    let raw = std::fs::read_to_string(&s.audit).expect("audit");
    for n in [60, 61, 62, 63] {
        assert!(!raw.contains(ean(n).expose()), "EAN in the audit log");
    }
    for r in Role::ALL {
        assert!(!raw.contains(&token(r)), "token in the audit log");
    }
    assert!(!raw.contains("not-a-configured-token"));
    let report = meterstand_audit::verify(&s.audit, None).expect("verify");
    assert!(report.is_ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_metrics_count_refusals_subjects_rows_and_new_addresses() {
    let s = Server::start_tagged(ApiConfig::default(), "abuse").await;
    let e = ean(70);
    // Ten households: one statistics row per day.
    for n in 70..80 {
        s.register(&ean(n), ConsentLevel::Daily, 1000, "E1A");
        s.write_days(&ean(n), &[1, 2, 3], 1_000_000, 0).await;
    }
    s.freeze();
    let before = s.metrics().await;
    let refused = |text: &str, reason: &str| {
        metric(
            text,
            "meterstand_api_auth_refused_total",
            &[("reason", reason)],
        )
    };
    let po = "privacy_officer-abuse";
    let analyst = "analyst-abuse";
    // Refusals of each kind.
    s.call(Method::GET, AGG, None, None).await;
    s.http
        .get(format!("http://{}{AGG}", s.addr))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("send");
    s.call(Method::GET, AGG, Some(Role::Crm), None).await;
    // Subject operations and rows.
    let export = format!("/v1/subjects/{}/export", e.expose());
    for _ in 0..3 {
        s.json(Method::GET, &export, Role::PrivacyOfficer, None)
            .await;
    }
    let objection = format!("/v1/subjects/{}/objection", e.expose());
    s.json(Method::PUT, &objection, Role::PrivacyOfficer, None)
        .await;
    let v = s.json(Method::GET, AGG, Role::Analyst, None).await;
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(2), "{v}");
    let after = s.metrics().await;
    for reason in ["no_token", "unknown_token", "wrong_role"] {
        assert!(
            refused(&after, reason) >= refused(&before, reason) + 1.0,
            "{reason}"
        );
    }
    let ops = |text: &str, token: &str, op: &str| {
        metric(
            text,
            "meterstand_api_subject_operations_total",
            &[("token", token), ("operation", op)],
        )
    };
    assert_eq!(
        ops(&before, po, "subject.export"),
        0.0,
        "exported from the start"
    );
    assert_eq!(ops(&after, po, "subject.export"), 3.0);
    assert_eq!(ops(&after, po, "subject.objection"), 1.0);
    assert_eq!(
        ops(&before, po, "subject.objection"),
        0.0,
        "exported from the start"
    );
    assert_eq!(
        metric(
            &after,
            "meterstand_api_rows_returned_total",
            &[("token", analyst)]
        ),
        2.0
    );
    // All calls came from 127.0.0.1: one new address per token that called.
    let new_address = |text: &str, token: &str| {
        metric(
            text,
            "meterstand_api_token_new_address_total",
            &[("token", token)],
        )
    };
    assert_eq!(new_address(&after, po), 1.0);
    assert_eq!(new_address(&after, analyst), 1.0);
    assert_eq!(new_address(&after, "operator-abuse"), 1.0);
    assert!(!after.contains(&token(Role::Analyst)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objecting_connection_leaves_statistics_but_not_its_export() {
    let s = Server::start(ApiConfig::default()).await;
    for n in 0..11 {
        let e = ean(80 + n);
        s.register(&e, ConsentLevel::Daily, 1000, "E1A");
        s.write_days(&e, &[1, 2, 3, 4], 1_000_000, 0).await;
    }
    let objecting = ean(80);
    let p = s.pseudonymiser.ean(&objecting);
    let objection = format!("/v1/subjects/{}/objection", objecting.expose());
    let v = s
        .json(Method::PUT, &objection, Role::PrivacyOfficer, None)
        .await;
    assert_eq!(
        v,
        json!({
            "pseudonym": p.to_string(),
            "pseudonyms": [p.to_string()],
            "objection": true,
            "erased": false,
            "sealed_before": null,
        })
    );
    // Again: the same state (idempotent).
    let again = s
        .json(Method::PUT, &objection, Role::PrivacyOfficer, None)
        .await;
    assert_eq!(again, v);
    s.freeze();
    let v = s.json(Method::GET, AGG, Role::Analyst, None).await;
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["connections"] == 10), "{v}");
    let export = format!("/v1/subjects/{}/export", objecting.expose());
    let v = s
        .json(Method::GET, &export, Role::PrivacyOfficer, None)
        .await;
    assert_eq!(v["objection"], true, "{v}");
    assert!(v["connection"]["analytics"].is_null(), "{v}");
    assert_eq!(
        v["readings"]["day"].as_array().map(Vec::len),
        Some(8),
        "an objection removes no readings"
    );
    // Withdrawn: what was kept meanwhile stays out (sealed); frozen statistics do not change.
    let v = s
        .json(Method::DELETE, &objection, Role::PrivacyOfficer, None)
        .await;
    assert_eq!(v["objection"], false, "{v}");
    assert_eq!(v["sealed_before"], NOW, "{v}");
    s.freeze();
    let v = s.json(Method::GET, AGG, Role::Analyst, None).await;
    assert!(
        v["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["connections"] == 10)
    );
    let (_, csv) = s
        .call(
            Method::GET,
            &format!("{export}?format=csv"),
            Some(Role::PrivacyOfficer),
            None,
        )
        .await;
    assert!(
        csv.contains(&format!("state,{p},,,,,,,,,,false,false,{NOW}\n")),
        "{csv}"
    );
}

/// The subject export shows a corrected reading with when it was corrected, in JSON and
/// CSV; other readings carry no `corrected_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_shows_when_a_reading_was_corrected() {
    let s = Server::start(ApiConfig::default()).await;
    let e = ean(12);
    s.register(&e, ConsentLevel::Interval, 1234, "E1A");
    s.write_days(&e, &[1, 2], 7_000_000, 0).await;
    let t = s.local_midnight(1);
    let item = IngestItem {
        correction: true,
        connection: s.pseudonymiser.ean(&e),
        previous: Vec::new(),
        meter: s
            .pseudonymiser
            .meter(&"E0031003262764316".parse().expect("meter")),
        readings: vec![TieredReading {
            reading: Reading {
                register: Register::ImportT1,
                time: t,
                value: 6_999_500,
            },
            tiers: s.calendar.tiers_of(Register::ImportT1, t),
        }],
    };
    let out = ReadingWriter::write(s.store.as_ref(), vec![item])
        .await
        .expect("write");
    assert_eq!((out.corrected, out.conflicts), (3, 0), "{out:?}");

    let export = format!("/v1/subjects/{}/export", e.expose());
    let v = s
        .json(Method::GET, &export, Role::PrivacyOfficer, None)
        .await;
    let day = v["readings"]["day"].as_array().expect("day");
    let corrected: Vec<&serde_json::Value> = day
        .iter()
        .filter(|r| r.get("corrected_at").is_some())
        .collect();
    assert_eq!(corrected.len(), 1, "{day:?}");
    assert_eq!(corrected[0]["value"], "6999.500");
    assert_eq!(corrected[0]["time"], t.to_string());
    let at = corrected[0]["corrected_at"].as_str().expect("a time");
    at.parse::<jiff::Timestamp>().expect("RFC 3339");
    assert_eq!(
        v["readings"]["month"][0]["corrected_at"].as_str(),
        Some(at),
        "the month tier was corrected too"
    );
    let (_, csv) = s
        .call(
            Method::GET,
            &format!("{export}?format=csv"),
            Some(Role::PrivacyOfficer),
            None,
        )
        .await;
    assert_eq!(
        csv.lines()
            .filter(|l| l.starts_with("reading,") && l.ends_with(&format!(",{at},,,")))
            .count(),
        3,
        "{csv}"
    );
}
