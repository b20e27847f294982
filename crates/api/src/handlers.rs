//! The `/v1` endpoints. Each checks the caller's role first, then its input, then asks the
//! store on a blocking thread. Privacy-officer and CRM calls are audited whatever the outcome.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use meterstand_model::{Connection, ConsentLevel, Ean, Postcode4, Profile, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::AggregateQuery;

use crate::ApiState;
use crate::auth::{Caller, Role};
use crate::dto::*;
use crate::error::{ApiError, ErrorBody};
use crate::kanon;
use crate::params::{self, Format};

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn parse_ean(text: &str) -> Result<Ean, ApiError> {
    Ean::from_str(text).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_ean",
            "the EAN must be 18 digits with a valid GS1 check digit",
        )
    })
}

fn csv_response(
    build: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> csv::Result<()>,
) -> Result<Response, ApiError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    build(&mut w).map_err(|_| ApiError::internal())?;
    let body = w.into_inner().map_err(|_| ApiError::internal())?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
}

/// Consumption per period and group over all connections, k-anonymised.
#[utoipa::path(
    get, path = "/v1/aggregates", tag = "analyst",
    params(AggregateParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Consumption per period and group; small cells suppressed",
            content((AggregateResponse = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Bad parameter or range too large", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not analyst", body = ErrorBody),
    )
)]
pub async fn aggregates(
    State(st): State<ApiState>,
    caller: Caller,
    q: Result<Query<AggregateParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Analyst])?;
    let q = query(q)?;
    let tier = params::granularity(q.granularity.as_deref())?;
    let kind = params::register(q.register.as_deref())?;
    let group_by = params::group_by(q.group_by.as_deref())?;
    let format = params::format(q.format.as_deref())?;
    let (from, to) = params::range(&q.from, &q.to, tier, st.calendar(), &st.config().max_range)?;
    let query = AggregateQuery {
        kind,
        tier,
        from,
        to,
        group_by,
    };
    let cells = st.blocking(move |b| b.aggregate(&query)).await??;
    let released = kanon::suppress(cells, u64::from(st.config().min_group_size));
    let mut names = Vec::new();
    if group_by.postcode4 {
        names.push("postcode4".to_string());
    }
    if group_by.profile {
        names.push("profile".to_string());
    }
    let rows: Vec<AggregateRow> = released
        .into_iter()
        .map(|r| {
            let mut group = std::collections::BTreeMap::new();
            if group_by.postcode4 {
                group.insert("postcode4".into(), r.group.postcode4.map(|p| p.to_string()));
            }
            if group_by.profile {
                group.insert(
                    "profile".into(),
                    r.group.profile.as_ref().map(|p| p.as_str().to_string()),
                );
            }
            AggregateRow {
                period_start: r.period_start.to_string(),
                group,
                connections: r.cell.map(|c| c.0),
                consumption: r.cell.map(|c| c.1),
                suppressed: r.cell.is_none(),
            }
        })
        .collect();
    let suppressed_cells = rows.iter().filter(|r| r.suppressed).count() as u64;
    let response = AggregateResponse {
        unit: kind.stored_unit().to_string(),
        granularity: tier.as_str().to_string(),
        register: kind.as_str().to_string(),
        group_by: names,
        rows,
        suppressed_cells,
    };
    match format {
        Format::Json => Ok(axum::Json(response).into_response()),
        Format::Csv => csv_response(|w| {
            let mut header = vec!["period_start"];
            header.extend(response.group_by.iter().map(String::as_str));
            header.extend(["connections", "consumption", "suppressed", "unit"]);
            w.write_record(&header)?;
            for row in &response.rows {
                let mut rec = vec![row.period_start.clone()];
                for name in &response.group_by {
                    rec.push(row.group.get(name).cloned().flatten().unwrap_or_default());
                }
                rec.push(row.connections.map(|n| n.to_string()).unwrap_or_default());
                rec.push(row.consumption.map(|n| n.to_string()).unwrap_or_default());
                rec.push(row.suppressed.to_string());
                rec.push(response.unit.clone());
                w.write_record(&rec)?;
            }
            Ok(())
        }),
    }
}

/// One pseudonymous connection's consumption per period.
#[utoipa::path(
    get, path = "/v1/series/{pseudonym}", tag = "analyst",
    params(("pseudonym" = String, Path, description = "A pseudonym, e.g. v1-<32 hex>"), SeriesParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Consumption per period",
            content((SeriesResponse = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Bad pseudonym or parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not analyst", body = ErrorBody),
        (status = 404, description = "Nothing stored under this pseudonym", body = ErrorBody),
    )
)]
pub async fn series(
    State(st): State<ApiState>,
    caller: Caller,
    Path(pseudonym): Path<String>,
    q: Result<Query<SeriesParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Analyst])?;
    let p = Pseudonym::from_str(&pseudonym).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_pseudonym",
            "a pseudonym looks like v1-<32 hex digits>",
        )
    })?;
    let q = query(q)?;
    let tier = params::granularity(q.granularity.as_deref())?;
    let kind = params::register(q.register.as_deref())?;
    let format = params::format(q.format.as_deref())?;
    let (from, to) = params::range(&q.from, &q.to, tier, st.calendar(), &st.config().max_range)?;
    let rows = st
        .blocking(move |b| {
            if !b.knows(p)? {
                return Ok(None);
            }
            b.series(p, kind, tier, from, to).map(Some)
        })
        .await??
        .ok_or_else(|| ApiError::not_found("nothing is stored under this pseudonym"))?;
    let response = SeriesResponse {
        pseudonym: p.to_string(),
        unit: kind.stored_unit().to_string(),
        granularity: tier.as_str().to_string(),
        register: kind.as_str().to_string(),
        rows: rows
            .iter()
            .map(|r| SeriesRowOut {
                period_start: r.period_start.to_string(),
                consumption: r.consumption,
            })
            .collect(),
    };
    match format {
        Format::Json => Ok(axum::Json(response).into_response()),
        Format::Csv => csv_response(|w| {
            w.write_record(["period_start", "consumption", "unit"])?;
            for row in &response.rows {
                w.write_record([
                    row.period_start.as_str(),
                    &row.consumption.to_string(),
                    &response.unit,
                ])?;
            }
            Ok(())
        }),
    }
}

fn connection_from(body: &[u8]) -> Result<Connection, ApiError> {
    let body: ConnectionBody =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let consent = ConsentLevel::from_str(&body.consent)
        .map_err(|_| ApiError::bad_request("consent must be off, standard, daily or interval"))?;
    let postcode4 = body
        .postcode4
        .as_deref()
        .map(Postcode4::from_str)
        .transpose()
        .map_err(|_| ApiError::bad_request("postcode4 must be four digits, 1000 to 9999"))?;
    let profile = body
        .profile
        .as_deref()
        .map(Profile::from_str)
        .transpose()
        .map_err(|_| ApiError::bad_request("profile must be 1 to 8 letters or digits"))?;
    Ok(Connection {
        consent,
        postcode4,
        profile,
    })
}

/// Registers or updates a connection (CRM). Lowering consent removes the readings the new
/// level no longer allows, and the response says what went.
#[utoipa::path(
    put, path = "/v1/connections/{ean}", tag = "crm",
    params(("ean" = String, Path, description = "The connection's 18-digit EAN")),
    request_body = ConnectionBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stored", body = ConnectionResponse),
        (status = 400, description = "Bad EAN or body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not crm", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    )
)]
pub async fn put_connection(
    State(st): State<ApiState>,
    caller: Caller,
    Path(ean): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut pseudonym = None;
    let result = async {
        caller.require(&[Role::Crm])?;
        let ean = parse_ean(&ean)?;
        let p = st.pseudonymiser().ean(&ean);
        // Current pseudonym first, then the older key versions': a lowered consent reaches
        // readings stored before a key rotation too.
        let all = st.pseudonymiser().ean_all_versions(&ean);
        pseudonym = Some(p);
        let body = body.map_err(|e| body_error(&st, e))?;
        let connection = connection_from(&body)?;
        let out = ConnectionOut::from(&connection);
        let receipt = st
            .blocking(move |b| b.put_connection(&all, connection))
            .await??;
        let removed =
            (receipt.deleted.total() > 0).then(|| ReceiptOut::new(p, &receipt, st.calendar()));
        Ok(axum::Json(ConnectionResponse {
            pseudonym: p.to_string(),
            connection: out,
            removed,
        })
        .into_response())
    }
    .await;
    st.audit(&caller, "connection.put", pseudonym, result).await
}

/// Everything stored for one EAN (GDPR Art. 15 and 20).
#[utoipa::path(
    get, path = "/v1/subjects/{ean}/export", tag = "privacy_officer",
    params(("ean" = String, Path, description = "The connection's 18-digit EAN"), ExportParams),
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
    caller: Caller,
    Path(ean): Path<String>,
    q: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut pseudonym = None;
    let result = async {
        caller.require(&[Role::PrivacyOfficer])?;
        let ean = parse_ean(&ean)?;
        let current = st.pseudonymiser().ean(&ean);
        pseudonym = Some(current);
        let format = params::format(query(q)?.format.as_deref())?;
        let all = st.pseudonymiser().ean_all_versions(&ean);
        let searched: Vec<String> = all.iter().map(ToString::to_string).collect();
        let export = st.blocking(move |b| b.export(&all)).await??;
        let readings = |tier: Tier| export.tier(tier).iter().map(ReadingOut::from).collect();
        let response = ExportResponse {
            pseudonym: current.to_string(),
            pseudonyms: searched,
            connection: export.connection.as_ref().map(ConnectionOut::from),
            meters: export.meters.iter().map(ToString::to_string).collect(),
            readings: ExportReadings {
                interval: readings(Tier::Interval),
                day: readings(Tier::Day),
                month: readings(Tier::Month),
            },
        };
        match format {
            Format::Json => Ok(axum::Json(response).into_response()),
            Format::Csv => csv_response(|w| {
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
                    ])?;
                }
                for m in &response.meters {
                    w.write_record(["meter", m, "", "", "", "", "", "", "", ""])?;
                }
                for (tier, rows) in [
                    ("interval", &response.readings.interval),
                    ("day", &response.readings.day),
                    ("month", &response.readings.month),
                ] {
                    for r in rows {
                        w.write_record([
                            "reading", p, tier, &r.obis, &r.time, &r.value, &r.unit, "", "", "",
                        ])?;
                    }
                }
                Ok(())
            }),
        }
    }
    .await;
    st.audit(&caller, "subject.export", pseudonym, result).await
}

/// Erasure (GDPR Art. 17): removes what may be removed, physically, and returns a receipt.
#[utoipa::path(
    delete, path = "/v1/subjects/{ean}", tag = "privacy_officer",
    params(("ean" = String, Path, description = "The connection's 18-digit EAN")),
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
    caller: Caller,
    Path(ean): Path<String>,
) -> Result<Response, ApiError> {
    let mut pseudonym = None;
    let result = async {
        caller.require(&[Role::PrivacyOfficer])?;
        let ean = parse_ean(&ean)?;
        let current = st.pseudonymiser().ean(&ean);
        pseudonym = Some(current);
        let all = st.pseudonymiser().ean_all_versions(&ean);
        let receipt = st.blocking(move |b| b.erase(&all)).await??;
        Ok(axum::Json(ReceiptOut::new(current, &receipt, st.calendar())).into_response())
    }
    .await;
    st.audit(&caller, "subject.erase", pseudonym, result).await
}

/// A consistent backup of the whole store (RocksDB checkpoint) while it runs (operator).
#[utoipa::path(
    post, path = "/v1/backups", tag = "operator",
    request_body = BackupRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Backup written", body = BackupResponse),
        (status = 400, description = "Bad body, relative path or existing directory", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not operator", body = ErrorBody),
    )
)]
pub async fn backup(
    State(st): State<ApiState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let who = caller.require(&[Role::Operator])?.id.clone();
    let body = body.map_err(|e| body_error(&st, e))?;
    let req: BackupRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let dir = std::path::PathBuf::from(&req.to);
    if !dir.is_absolute() {
        return Err(ApiError::bad_request("to must be an absolute path"));
    }
    let started = std::time::Instant::now();
    let target = dir.clone();
    let info = st.blocking(move |b| b.backup(&target)).await??;
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(token = %who, path = %dir.display(), files = info.files, bytes = info.bytes, millis, "backup written");
    Ok(axum::Json(BackupResponse {
        path: req.to,
        files: info.files,
        bytes: info.bytes,
        millis,
    })
    .into_response())
}

fn body_error(st: &ApiState, e: BytesRejection) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            format!(
                "the body may be at most {} bytes",
                st.config().max_body_bytes
            ),
        )
    } else {
        ApiError::bad_request(e.body_text())
    }
}
