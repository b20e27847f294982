//! The `/v1` endpoints. The caller's role is checked before any of them runs (the route
//! table, `routes.rs`); each then reads its input (a body only now, size- and
//! time-limited), then takes a place among the requests served at once,
//! then asks the store on a blocking thread. What a call touched is noted in its
//! [`CallRecord`]; the audit layer writes the line whatever the outcome.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meterstand_model::{Connection, ConsentLevel, Ean, Postcode4, Profile, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_statistics::GroupBy;

use crate::ApiState;
use crate::audit::CallRecord;
use crate::dto::*;
use crate::error::{ApiError, ErrorBody};
use crate::input::{self, QueryParams, RawQuery};
use crate::params::{self, Format};

/// A path segment that could not be decoded; its text is not repeated.
fn path_segment(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|_| ApiError::bad_request("the path could not be decoded"))
}

fn bad_ean() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_ean",
        "the EAN must be 18 digits with a valid GS1 check digit",
    )
}

/// The subject of an `{ean}` path: its pseudonym under the current key, and under every key
/// version (current first): what a subject request reaches, also data stored before a key
/// rotation.
fn subject_of(
    st: &ApiState,
    ean: Result<Path<String>, PathRejection>,
) -> Result<(Pseudonym, Vec<Pseudonym>), ApiError> {
    let ean = parse_ean(&path_segment(ean).map_err(|_| bad_ean())?)?;
    Ok((
        st.pseudonymiser().ean(&ean),
        st.pseudonymiser().ean_all_versions(&ean),
    ))
}

fn parse_ean(text: &str) -> Result<Ean, ApiError> {
    Ean::from_str(text).map_err(|_| bad_ean())
}

fn csv_response(
    build: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> csv::Result<()>,
) -> Result<Response, ApiError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    build(&mut w).map_err(|_| ApiError::internal())?;
    let body = w.into_inner().map_err(|_| ApiError::internal())?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
}

fn parquet_response(
    body: Result<Vec<u8>, ::parquet::errors::ParquetError>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        tracing::error!(error = %e, "parquet body could not be written");
        ApiError::internal()
    })?;
    Ok(([(header::CONTENT_TYPE, crate::parquet::CONTENT_TYPE)], body).into_response())
}

/// The group of a view row, keyed as the grouping names it.
fn group_of(row: &meterstand_statistics::Row, g: GroupBy) -> BTreeMap<String, String> {
    let mut group = BTreeMap::new();
    if matches!(g, GroupBy::Row | GroupBy::Postcode4 | GroupBy::Region) {
        group.insert("area".to_string(), row.area.to_string());
    }
    if matches!(g, GroupBy::Row | GroupBy::Profile) {
        group.insert("profile".to_string(), row.profile.to_string());
    }
    group
}

/// What the statistics and series queries share: the tier, register kind, answer format and
/// half-open range, each checked and noted on the call's audit line.
struct PeriodQuery {
    tier: Tier,
    kind: meterstand_model::RegisterKind,
    format: Format,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
}

fn period_query(
    q: &QueryParams,
    st: &ApiState,
    record: &CallRecord,
) -> Result<PeriodQuery, ApiError> {
    let tier = params::granularity(q.get("granularity"))?;
    record.param("granularity", tier.as_str());
    let kind = params::register(q.get("register"))?;
    record.param("register", kind.as_str());
    let format = params::format(q.get("format"), &Format::TABLES)?;
    record.param("format", format.as_str());
    let (from, to) = params::range(q, tier, st.calendar(), &st.config().max_range)?;
    record.param("from", from.to_string());
    record.param("to", to.to_string());
    Ok(PeriodQuery {
        tier,
        kind,
        format,
        from,
        to,
    })
}

/// Frozen statistics: per period the published rows of at least `k` connections, or a
/// view of them (every view row a sum of whole published rows).
#[utoipa::path(
    get, path = "/v1/statistics", tag = "analyst",
    params(StatisticsParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Frozen statistics per period and group; every row counts at least privacy.min_group_size connections",
            content((StatisticsResponse = "application/json"), (String = "text/csv"),
                (ParquetFile = "application/vnd.apache.parquet"))),
        (status = 400, description = "Bad parameter or range too large", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not analyst", body = ErrorBody),
    )
)]
pub async fn statistics(
    State(st): State<ApiState>,
    record: CallRecord,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let q = QueryParams::parse(q, &StatisticsParams::NAMES)?;
    let PeriodQuery {
        tier,
        kind,
        format,
        from,
        to,
    } = period_query(&q, &st, &record)?;
    let group_by = params::group_by(q.get("group_by"))?;
    record.param("group_by", group_by.as_str());
    let _permit = st.permit()?;
    let periods = st
        .blocking(move |b| b.statistics(tier, kind, from, to))
        .await??;
    let mut rows = Vec::new();
    for period in &periods {
        let start = period.key.period_start.to_string();
        for row in meterstand_statistics::view(&period.rows, group_by) {
            rows.push(StatisticsRow {
                period_start: start.clone(),
                group: group_of(&row, group_by),
                connections: row.connections,
                consumption: row.consumption,
            });
        }
    }
    record.rows(rows.len() as u64);
    let response = StatisticsResponse {
        unit: kind.stored_unit().to_string(),
        granularity: tier.as_str().to_string(),
        register: kind.as_str().to_string(),
        group_by: group_by.as_str().to_string(),
        min_group_size: st.config().min_group_size,
        periods: periods.len() as u64,
        rows,
    };
    match format {
        Format::Json => Ok(axum::Json(response).into_response()),
        Format::Csv => csv_response(|w| {
            w.write_record([
                "period_start",
                "area",
                "profile",
                "connections",
                "consumption",
                "unit",
            ])?;
            for row in &response.rows {
                let field = |name: &str| row.group.get(name).cloned().unwrap_or_default();
                w.write_record([
                    row.period_start.clone(),
                    field("area"),
                    field("profile"),
                    row.connections.to_string(),
                    row.consumption.to_string(),
                    response.unit.clone(),
                ])?;
            }
            Ok(())
        }),
        Format::Parquet => parquet_response(crate::parquet::statistics(&response)),
    }
}

/// Retired: per-query suppression could be combined into answers about one household.
/// Analysts read `/v1/statistics`, the one safe way to ask. Left out of `/openapi.json` (it
/// is no longer part of the interface); old clients get 410 and the way forward.
pub async fn aggregates() -> Result<Response, ApiError> {
    Err(ApiError::new(
        StatusCode::GONE,
        "retired",
        "/v1/aggregates is retired; use /v1/statistics",
    ))
}

/// Retired with the per-connection series: an analyst reads aggregates only, and a series,
/// however pseudonymous, is one household's consumption. Answers 410 to every role (whoever
/// still calls it learns where to go); left out of `/openapi.json` like `/v1/aggregates`.
pub async fn series() -> Result<Response, ApiError> {
    Err(ApiError::new(
        StatusCode::GONE,
        "retired",
        "/v1/series is retired: analysts read aggregates only; use /v1/statistics",
    ))
}

fn connection_from(body: &[u8]) -> Result<Connection, ApiError> {
    const CONSENT: &str = "off, standard, daily or interval";
    const POSTCODE: &str = "four digits, 1000 to 9999";
    const PROFILE: &str = "1 to 8 letters or digits";
    let fields =
        input::json_object_retiring(body, &ConnectionBody::FIELDS, &ConnectionBody::RETIRED)?;
    let consent = input::string_field(&fields, "consent", CONSENT)?
        .ok_or_else(|| ApiError::bad_request(format!("consent is required: {CONSENT}")))?;
    let consent = ConsentLevel::from_str(consent)
        .map_err(|_| ApiError::bad_request(format!("consent must be {CONSENT}")))?;
    let postcode4 = input::string_field(&fields, "postcode4", POSTCODE)?
        .map(Postcode4::from_str)
        .transpose()
        .map_err(|_| ApiError::bad_request(format!("postcode4 must be {POSTCODE}")))?;
    let profile = input::string_field(&fields, "profile", PROFILE)?
        .map(Profile::from_str)
        .transpose()
        .map_err(|_| ApiError::bad_request(format!("profile must be {PROFILE}")))?;
    Ok(Connection {
        consent,
        postcode4,
        profile,
    })
}

/// Registers or updates a connection (CRM). Lowering consent removes the readings the new
/// level no longer allows, and the response says what went. The subject's privacy state is
/// not the CRM's: an objection recorded by the privacy officer stays whatever the update
/// says, and a body with `analytics` is refused (400) with a pointer to
/// `PUT /v1/subjects/{ean}/objection`.
#[utoipa::path(
    put, path = "/v1/connections/{ean}", tag = "crm",
    params(("ean" = String, Path, description = "The connection's 18-digit EAN; the last digit is the GS1 check digit of the first 17", pattern = "^[0-9]{18}$", min_length = 18, max_length = 18)),
    request_body = ConnectionBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stored", body = ConnectionResponse),
        (status = 400, description = "Bad EAN or body (a body with `analytics` is refused: the objection is the privacy officer's)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not crm", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    )
)]
pub async fn put_connection(
    State(st): State<ApiState>,
    record: CallRecord,
    ean: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A lowered consent reaches readings stored before a key rotation too.
    let (p, all) = subject_of(&st, ean)?;
    let body = st.body(&headers, body).await?;
    let connection = connection_from(&body)?;
    record.param("consent", connection.consent.as_str());
    let _permit = st.permit()?;
    record.subjects(&all);
    let out = ConnectionOut::from(&connection);
    let receipt = st
        .blocking(move |b| b.put_connection(&all, connection))
        .await??;
    record.rows(receipt.deleted.total());
    let removed =
        (receipt.deleted.total() > 0).then(|| ReceiptOut::new(p, &receipt, st.calendar()));
    Ok(axum::Json(ConnectionResponse {
        pseudonym: p.to_string(),
        connection: out,
        removed,
    })
    .into_response())
}

/// Everything stored for one EAN (GDPR Art. 15 and 20).
#[utoipa::path(
    get, path = "/v1/subjects/{ean}/export", tag = "privacy_officer",
    params(("ean" = String, Path, description = "The connection's 18-digit EAN; the last digit is the GS1 check digit of the first 17", pattern = "^[0-9]{18}$", min_length = 18, max_length = 18), ExportParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Everything stored; empty when nothing is held",
            content((ExportResponse = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Bad EAN or format", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not privacy_officer", body = ErrorBody),
    )
)]
pub async fn export(
    State(st): State<ApiState>,
    record: CallRecord,
    ean: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let (current, all) = subject_of(&st, ean)?;
    let q = QueryParams::parse(q, &ExportParams::NAMES)?;
    let format = params::format(q.get("format"), &Format::EXPORT)?;
    record.param("format", format.as_str());
    let searched: Vec<String> = all.iter().map(ToString::to_string).collect();
    let _permit = st.permit()?;
    record.subjects(&all);
    let export = st.blocking(move |b| b.export(&all)).await??;
    record.rows(
        Tier::ALL
            .iter()
            .map(|t| export.tier(*t).len() as u64)
            .sum::<u64>(),
    );
    let readings = |tier: Tier| {
        export
            .tier(tier)
            .iter()
            .map(|r| ReadingOut::exported(r, export.corrected_at(tier, r)))
            .collect()
    };
    let response = ExportResponse {
        pseudonym: current.to_string(),
        pseudonyms: searched,
        connection: export.connection.as_ref().map(ConnectionOut::from),
        objection: export.state.objected,
        erased: export.state.erased,
        sealed_before: export.state.sealed_before.map(|t| t.to_string()),
        meters: export.meters.iter().map(ToString::to_string).collect(),
        readings: ExportReadings {
            interval: readings(Tier::Interval),
            day: readings(Tier::Day),
            month: readings(Tier::Month),
        },
    };
    match format {
        Format::Json => Ok(axum::Json(response).into_response()),
        Format::Csv => csv_response(|w| export_csv(w, &response)),
        // Not in Format::EXPORT, so refused above, before anything was read.
        Format::Parquet => Err(ApiError::bad_request("format must be json or csv")),
    }
}

/// The export as CSV rows: the connection, the privacy state, the meters, the readings.
fn export_csv(w: &mut csv::Writer<Vec<u8>>, response: &ExportResponse) -> Result<(), csv::Error> {
    w.write_record([
        "record",
        "pseudonym",
        "tier",
        "obis",
        "time",
        "value",
        "unit",
        "consent",
        "postcode4",
        "profile",
        "corrected_at",
        "objection",
        "erased",
        "sealed_before",
    ])?;
    let p = response.pseudonym.as_str();
    if let Some(c) = &response.connection {
        w.write_record([
            "connection",
            p,
            "",
            "",
            "",
            "",
            "",
            &c.consent,
            c.postcode4.as_deref().unwrap_or(""),
            c.profile.as_deref().unwrap_or(""),
            "",
            "",
            "",
            "",
        ])?;
    }
    // The privacy state, always: "no objection" is an answer too.
    let flag = |b: bool| if b { "true" } else { "false" };
    w.write_record([
        "state",
        p,
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        flag(response.objection),
        flag(response.erased),
        response.sealed_before.as_deref().unwrap_or(""),
    ])?;
    for m in &response.meters {
        w.write_record(["meter", m, "", "", "", "", "", "", "", "", "", "", "", ""])?;
    }
    for (tier, rows) in [
        ("interval", &response.readings.interval),
        ("day", &response.readings.day),
        ("month", &response.readings.month),
    ] {
        for r in rows {
            w.write_record([
                "reading",
                p,
                tier,
                &r.obis,
                &r.time,
                &r.value,
                &r.unit,
                "",
                "",
                "",
                r.corrected_at.as_deref().unwrap_or(""),
                "",
                "",
                "",
            ])?;
        }
    }
    Ok(())
}

/// Erasure (GDPR Art. 17): removes what may be removed, physically, and returns a receipt.
#[utoipa::path(
    delete, path = "/v1/subjects/{ean}", tag = "privacy_officer",
    params(("ean" = String, Path, description = "The connection's 18-digit EAN; the last digit is the GS1 check digit of the first 17", pattern = "^[0-9]{18}$", min_length = 18, max_length = 18)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What was deleted, and what was kept, why and until when", body = ReceiptOut),
        (status = 400, description = "Bad EAN", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not privacy_officer", body = ErrorBody),
    )
)]
pub async fn erase(
    State(st): State<ApiState>,
    record: CallRecord,
    ean: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (current, all) = subject_of(&st, ean)?;
    let _permit = st.permit()?;
    record.subjects(&all);
    let receipt = st.blocking(move |b| b.erase(&all)).await??;
    record.rows(receipt.deleted.total());
    Ok(axum::Json(ReceiptOut::new(current, &receipt, st.calendar())).into_response())
}

/// Records (`true`) or withdraws (`false`) the subject's objection under the EAN's pseudonym
/// of every key version, and answers with the subject's state as the store now holds it.
async fn set_objection(
    st: ApiState,
    record: CallRecord,
    ean: Result<Path<String>, PathRejection>,
    objected: bool,
) -> Result<Response, ApiError> {
    // The objection holds for what was stored before a key rotation too, and follows the
    // subject to a new version.
    let (current, all) = subject_of(&st, ean)?;
    let searched: Vec<String> = all.iter().map(ToString::to_string).collect();
    record.param("objection", objected.to_string());
    let _permit = st.permit()?;
    record.subjects(&all);
    let state = st
        .blocking(move |b| {
            b.set_objection(&all, objected)?;
            b.subject_state(&all)
        })
        .await??;
    Ok(axum::Json(ObjectionResponse {
        pseudonym: current.to_string(),
        pseudonyms: searched,
        objection: state.objected,
        erased: state.erased,
        sealed_before: state.sealed_before.map(|t| t.to_string()),
    })
    .into_response())
}

/// Records the subject's objection to analytical use (GDPR Art. 21): its readings stay for
/// billing and subject requests, and it is in no statistic frozen from now on. Idempotent;
/// kept through CRM updates, consent changes, erasure and re-registration, and under every
/// key version. Recorded for an EAN nothing is stored for yet as well.
#[utoipa::path(
    put, path = "/v1/subjects/{ean}/objection", tag = "privacy_officer",
    params(("ean" = String, Path, description = "The connection's 18-digit EAN; the last digit is the GS1 check digit of the first 17", pattern = "^[0-9]{18}$", min_length = 18, max_length = 18)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The subject's state: objection true", body = ObjectionResponse),
        (status = 400, description = "Bad EAN", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not privacy_officer", body = ErrorBody),
    )
)]
pub async fn object(
    State(st): State<ApiState>,
    record: CallRecord,
    ean: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    set_objection(st, record, ean, true).await
}

/// Withdraws the subject's objection. What was stored while it held stays out of the
/// statistics (`sealed_before`); readings from now on count again. Idempotent.
#[utoipa::path(
    delete, path = "/v1/subjects/{ean}/objection", tag = "privacy_officer",
    params(("ean" = String, Path, description = "The connection's 18-digit EAN; the last digit is the GS1 check digit of the first 17", pattern = "^[0-9]{18}$", min_length = 18, max_length = 18)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The subject's state: objection false", body = ObjectionResponse),
        (status = 400, description = "Bad EAN", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not privacy_officer", body = ErrorBody),
    )
)]
pub async fn withdraw_objection(
    State(st): State<ApiState>,
    record: CallRecord,
    ean: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    set_objection(st, record, ean, false).await
}

mod backup;
pub use backup::{__path_backup, backup};
