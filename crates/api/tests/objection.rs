//! The objection is the privacy officer's, and analysts read aggregates only (issue #22),
//! played as the attackers would: a CRM whose routine update would bring an objector back,
//! a CRM that still sends `analytics`, callers of the retired per-connection series, and
//! roles other than the privacy officer's trying the objection endpoints. Each test fails on
//! the code before the issue (no objection endpoint, `analytics` accepted and reset to `true`
//! by an update without it, `/v1/series` answering 200).

mod common;

use common::{Api, ean};
use meterstand_api::Role;
use meterstand_model::{ConsentLevel, Ean};
use reqwest::Method;
use serde_json::{Value, json};

const DAY: &str = "/v1/statistics?from=2026-11-02&to=2026-11-03&granularity=day";
const OBJECTION: &str = "PUT /v1/subjects/{ean}/objection";

fn connection(e: &Ean) -> String {
    format!("/v1/connections/{}", e.expose())
}

fn objection(e: &Ean) -> String {
    format!("/v1/subjects/{}/objection", e.expose())
}

fn export(e: &Ean) -> String {
    format!("/v1/subjects/{}/export", e.expose())
}

/// The CRM's routine update: the attributes it holds, nothing about the objection.
const ROUTINE: &str = r#"{"consent":"daily","postcode4":"1000","profile":"E1A"}"#;

/// Eleven daily-consent households of one postcode and profile, registered by the CRM over
/// HTTP, each with 2026-11-02 written: one day row of 11 once frozen.
async fn eleven_households(api: &Api) {
    for n in 1..=11 {
        let (status, text) = api
            .send(
                Method::PUT,
                Role::Crm,
                &connection(&ean(n)),
                Some(ROUTINE.into()),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        api.write_day(&ean(n), 10 + n).await;
    }
}

/// `(connections, consumption)` of every row of a statistics answer.
fn counted(v: &Value) -> Vec<(u64, u64)> {
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["connections"].as_u64().expect("n"),
                r["consumption"].as_u64().expect("c"),
            )
        })
        .collect()
}

/// What `write_day` makes household `n` consume on the day: 96 quarter-hours of
/// `10 + n` Wh on tariff 1 (tariff 2 stays put).
fn day_consumption(n: u64) -> u64 {
    96 * (10 + n)
}

/// (a) The privacy officer records an objection; the CRM then sends its routine update
/// (consent, postcode4, profile: what it always sends, no objection field). The household
/// must stay out of the statistics frozen afterwards, and the export must still say so.
/// Before the issue the CRM's update set `analytics` back to `true` (its default), and the
/// household was counted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_crm_update_after_an_objection_does_not_bring_the_household_back() {
    let api = Api::start().await;
    eleven_households(&api).await;
    let objector = ean(1);
    let state = api.objection(&objector, true).await;
    assert_eq!(state["objection"], true, "{state}");
    assert_eq!(state["pseudonym"], api.ps.ean(&objector).to_string());

    // The CRM's nightly sync, three times, once with a higher consent.
    for body in [
        ROUTINE,
        r#"{"consent":"interval","postcode4":"1000","profile":"E1A"}"#,
        ROUTINE,
    ] {
        let (status, text) = api
            .send(
                Method::PUT,
                Role::Crm,
                &connection(&objector),
                Some(body.into()),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert!(v["connection"].get("analytics").is_none(), "{v}");
    }

    api.freeze();
    let v = api.json(Role::Analyst, DAY).await;
    let others: u64 = (2..=11).map(day_consumption).sum();
    assert_eq!(
        counted(&v),
        [(10, others)],
        "the objector is counted again: {v}"
    );
    for group_by in ["postcode4", "profile", "region", "postcode4,profile"] {
        let v = api
            .json(Role::Analyst, &format!("{DAY}&group_by={group_by}"))
            .await;
        let total: u64 = counted(&v).iter().map(|r| r.0).sum();
        assert_eq!(total, 10, "by {group_by}: {v}");
    }
    let v = api.json(Role::PrivacyOfficer, &export(&objector)).await;
    assert_eq!(v["objection"], true, "{v}");
    assert_eq!(v["connection"]["consent"], "daily", "{v}");
    assert!(v["connection"].get("analytics").is_none(), "{v}");
    let (status, csv) = api
        .get(
            Role::PrivacyOfficer,
            &format!("{}?format=csv", export(&objector)),
        )
        .await;
    assert_eq!(status, 200);
    let p = api.ps.ean(&objector);
    assert!(
        csv.contains(&format!("state,{p},,,,,,,,,,true,false,\n")),
        "{csv}"
    );
}

/// (b) A CRM that still sends `analytics` (either value) is refused with 400 naming the
/// privacy officer's endpoint, stores nothing, and cannot withdraw an objection with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_body_with_analytics_is_refused_naming_the_objection_endpoint() {
    let api = Api::start().await;
    let fresh = ean(21);
    let objector = ean(22);
    api.objection(&objector, true).await;
    for e in [&fresh, &objector] {
        for analytics in ["false", "true", "null", "\"no\"", "0"] {
            let body = format!(
                r#"{{"consent":"interval","postcode4":"1000","profile":"E1A","analytics":{analytics}}}"#
            );
            let (status, text) = api
                .send(Method::PUT, Role::Crm, &connection(e), Some(body.clone()))
                .await;
            assert_eq!(status, 400, "{body}: {text}");
            let v: Value = serde_json::from_str(&text).expect("json error");
            assert_eq!(v["error"]["code"], "bad_request", "{v}");
            let message = v["error"]["message"].as_str().expect("message");
            assert!(message.contains(OBJECTION), "{message}");
            assert!(!message.contains(e.expose()), "{message}");
        }
    }
    // Nothing was stored: no record for the fresh EAN, and the objector keeps its objection
    // and has no record either (the refused bodies registered nothing).
    let v = api.json(Role::PrivacyOfficer, &export(&fresh)).await;
    assert!(v["connection"].is_null(), "{v}");
    assert_eq!(v["objection"], false);
    let v = api.json(Role::PrivacyOfficer, &export(&objector)).await;
    assert!(v["connection"].is_null(), "{v}");
    assert_eq!(v["objection"], true, "{v}");
    // Each refusal is an audit line of the CRM's call, outcome invalid, without the field's
    // value among its parameters.
    let lines = api.audit_lines();
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|l| l["action"] == "connection.put")
        .collect();
    assert_eq!(refused.len(), 10);
    assert!(
        refused
            .iter()
            .all(|l| l["status"] == 400 && l["outcome"] == "invalid")
    );
    assert!(!api.audit_text().contains("analytics"));
}

/// (c) The per-connection series are retired: `/v1/series` and `/v1/series/{id}` answer 410
/// with the way to `/v1/statistics` to every role, whatever they are asked, and are not in
/// the OpenAPI document. Before the issue an analyst got the list of analyst ids and one
/// household's consumption per period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_series_answer_410_for_every_role_and_point_to_statistics() {
    let api = Api::start().await;
    for n in 1..=3 {
        api.register(&ean(n), ConsentLevel::Daily, 1000, "E1A");
        api.write_day(&ean(n), 10).await;
    }
    let storage = api.ps.ean(&ean(1)).to_string();
    let paths = [
        "/v1/series".to_string(),
        "/v1/series?from=2026-11-02&to=2026-11-03".to_string(),
        "/v1/series/a1-0123456789abcdef0123456789abcdef?from=2026-11-02&to=2026-11-03".into(),
        format!("/v1/series/{storage}?from=2026-11-02&to=2026-11-03&granularity=interval"),
        "/v1/series/anything?format=parquet".into(),
    ];
    for role in Role::ALL {
        for path in &paths {
            let (status, text) = api.get(role, path).await;
            assert_eq!(status, 410, "{path} as {role:?}: {text}");
            let v: Value = serde_json::from_str(&text).expect("json error");
            assert_eq!(v["error"]["code"], "retired", "{v}");
            let message = v["error"]["message"].as_str().expect("message");
            assert!(message.contains("/v1/statistics"), "{message}");
            assert!(!message.contains(&storage), "{message}");
        }
    }
    // Without a token it is refused like every /v1 call.
    let r = api
        .http
        .get(format!("{}/v1/series", api.base))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
    // Every call is audited as what was asked for, with its 410.
    let lines = api.audit_lines();
    let gone: Vec<&Value> = lines.iter().filter(|l| l["status"] == 410).collect();
    assert_eq!(gone.len(), Role::ALL.len() * paths.len());
    assert!(gone.iter().all(|l| l["subjects"] == json!([])));
    assert!(
        gone.iter()
            .all(|l| l["route"] == "/v1/series" || l["route"] == "/v1/series/{id}")
    );
    // Not part of the interface any more.
    let doc: Value =
        serde_json::from_str(&meterstand_api::openapi_json()).expect("openapi document");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        paths.keys().all(|p| !p.starts_with("/v1/series")),
        "{:?}",
        paths.keys()
    );
}

/// (d) Only the privacy officer records or withdraws an objection: the CRM (whose updates
/// must not touch it), the analyst and the operator get 403, no token 401, and the
/// objection stays as the privacy officer left it. Every call, allowed or refused, is one
/// audit line naming the subject by pseudonym only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_privacy_officer_records_an_objection_and_every_call_is_audited() {
    let api = Api::start().await;
    let e = ean(31);
    api.register(&e, ConsentLevel::Daily, 1000, "E1A");
    let p = api.ps.ean(&e).to_string();
    let path = objection(&e);
    let mut expected_lines = 0;
    // The privacy officer records it first; then every other caller tries to withdraw it
    // (DELETE) and to record it (PUT).
    let state = api.objection(&e, true).await;
    assert_eq!(state["objection"], true);
    expected_lines += 1;
    for (method, objected) in [(Method::DELETE, "false"), (Method::PUT, "true")] {
        for caller in [
            None,
            Some(Role::Crm),
            Some(Role::Analyst),
            Some(Role::Operator),
        ] {
            let mut req = api
                .http
                .request(method.clone(), format!("{}{path}", api.base));
            if let Some(role) = caller {
                req = req.bearer_auth(format!("tok-{}", role.as_str()));
            }
            let r = req.send().await.expect("send");
            let status = r.status().as_u16();
            let text = r.text().await.expect("text");
            let want = if caller.is_none() { 401 } else { 403 };
            assert_eq!(status, want, "{method} as {caller:?}: {text}");
            let v: Value = serde_json::from_str(&text).expect("json error");
            assert!(v["error"]["code"].is_string(), "{v}");
            expected_lines += 1;
            let lines = api.audit_lines();
            assert_eq!(lines.len(), expected_lines, "one line per call");
            let l = &lines[expected_lines - 1];
            assert_eq!(l["action"], "auth.refused", "{l}");
            assert_eq!(l["outcome"], "denied", "{l}");
            assert_eq!(l["route"], "/v1/subjects/{ean}/objection", "{l}");
            match caller {
                None => assert_eq!(l["actor"]["kind"], "unauthenticated", "{l}"),
                Some(role) => assert_eq!(l["actor"]["token_id"], format!("{}-s", role.as_str())),
            }
        }
        // As the privacy officer left it: recorded before the DELETEs, withdrawn before the
        // PUTs.
        let left = objected == "false";
        let v = api.json(Role::PrivacyOfficer, &export(&e)).await;
        assert_eq!(v["objection"], left, "a refused {method} changed it: {v}");
        expected_lines += 1; // the export
        // The privacy officer's own call of this method.
        let (status, text) = api
            .send(method.clone(), Role::PrivacyOfficer, &path, None)
            .await;
        assert_eq!(status, 200, "{method}: {text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["objection"], objected == "true", "{v}");
        expected_lines += 1;
        let lines = api.audit_lines();
        assert_eq!(lines.len(), expected_lines);
        let l = &lines[expected_lines - 1];
        assert_eq!(l["action"], "subject.objection", "{l}");
        assert_eq!(l["outcome"], "ok");
        assert_eq!(l["actor"]["role"], "privacy_officer");
        assert_eq!(l["route"], "/v1/subjects/{ean}/objection");
        assert_eq!(l["subjects"], json!([p]));
        assert_eq!(l["params"], json!({"objection": objected}));
    }
    // The first line: the privacy officer's first PUT.
    let lines = api.audit_lines();
    assert_eq!(lines[0]["action"], "subject.objection");
    assert_eq!(lines[0]["params"], json!({"objection": "true"}));
    assert!(
        !api.audit_text().contains(e.expose()),
        "EAN in the audit log"
    );
    let report = meterstand_audit::verify(&api.audit_path(), None).expect("verify");
    assert!(report.is_ok(), "{report}");
}
