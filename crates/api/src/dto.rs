//! The JSON shapes of DESIGN §4 ("Response shapes"), documented in `/openapi.json`.

use std::collections::BTreeMap;

use meterstand_model::{Calendar, Connection, Reading, format_milli};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::ErasureReceipt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `granularity`: the tier a query reads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GranularityParam {
    Interval,
    Day,
    Month,
}

/// `register`: which registers a consumption is computed from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegisterParam {
    Import,
    Export,
    Gas,
}

/// `format`: the response's media type.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatParam {
    Json,
    Csv,
    Parquet,
}

/// `format` of the subject export: its records are of several shapes, so JSON or CSV.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormatParam {
    Json,
    Csv,
}

/// A Parquet file (`application/vnd.apache.parquet`): the CSV's columns with Parquet types
/// (`period_start` a UTC timestamp in milliseconds, integers INT64, text UTF-8, null where
/// the group has no such key), and `unit`, `granularity`, `register` and the rest of the
/// JSON's fields beside the rows in the file's key-value metadata.
#[derive(Debug)]
pub struct ParquetFile;

impl utoipa::PartialSchema for ParquetFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/vnd.apache.parquet")
            .description(Some(
                "A Parquet file: the CSV's columns with Parquet types; the JSON's other fields in its key-value metadata",
            ))
            .into()
    }
}

impl ToSchema for ParquetFile {}

/// `consent`: the connection's consent level (DESIGN §2).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsentParam {
    Off,
    Standard,
    Daily,
    Interval,
}

/// An RFC 3339 time (`2026-11-01T00:00:00Z`) or a date (`2026-11-01`) meaning local midnight
/// at its start; at most 64 characters.
#[derive(Debug)]
pub struct TimeOrDate;

impl utoipa::PartialSchema for TimeOrDate {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let string = |format| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(format)))
                .max_length(Some(64))
        };
        OneOfBuilder::new()
            .item(string(KnownFormat::DateTime))
            .item(string(KnownFormat::Date))
            .description(Some(
                "An RFC 3339 time or a date (local midnight at its start)",
            ))
            .into()
    }
}

impl ToSchema for TimeOrDate {}

/// Query of `GET /v1/statistics` (for the document; the handler reads the query itself so
/// that no error repeats what was sent).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatisticsParams {
    /// First period start, inclusive: an RFC 3339 time or a local date (`2026-11-01`).
    #[param(value_type = TimeOrDate, inline)]
    pub from: String,
    /// End, exclusive: an RFC 3339 time or a local date, not before `from` (equal: an empty
    /// range). `to - from` is bounded per granularity (`api.max_range_*`: by default 93 days
    /// of intervals, 1,098 of days, 3,660 of months).
    #[param(value_type = TimeOrDate, inline)]
    pub to: String,
    /// `interval`, `day` (default) or `month`.
    #[param(value_type = Option<GranularityParam>, inline, default = "day")]
    pub granularity: Option<String>,
    /// `import` (default), `export` or `gas`.
    #[param(value_type = Option<RegisterParam>, inline, default = "import")]
    pub register: Option<String>,
    /// The view of the published rows: `postcode4,profile` (the rows themselves),
    /// `postcode4`, `region`, `profile`, or empty for the total. Every view row is a sum of
    /// published rows.
    #[param(
        pattern = "^((postcode4|profile)(,(postcode4|profile))?|region)?$",
        max_length = 17
    )]
    pub group_by: Option<String>,
    /// `json` (default), `csv` or `parquet`.
    #[param(value_type = Option<FormatParam>, inline, default = "json")]
    pub format: Option<String>,
}

impl StatisticsParams {
    pub const NAMES: [&'static str; 6] = [
        "from",
        "to",
        "granularity",
        "register",
        "group_by",
        "format",
    ];
}

/// Query of `GET /v1/subjects/{ean}/export`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `json` (default) or `csv`.
    #[param(value_type = Option<ExportFormatParam>, inline, default = "json")]
    pub format: Option<String>,
}

impl ExportParams {
    pub const NAMES: [&'static str; 1] = ["format"];
}

/// Frozen statistics: for each period, the published rows (or a view of them, each a sum
/// of published rows) of at least `k` connections.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatisticsResponse {
    /// `Wh` for electricity, `dm3` for gas.
    pub unit: String,
    pub granularity: String,
    pub register: String,
    /// The view's grouping, normalised: `postcode4,profile`, `postcode4`, `region`,
    /// `profile` or empty.
    pub group_by: String,
    /// Every row counts at least this many connections.
    pub min_group_size: u32,
    /// Frozen periods in the range (periods not frozen yet, or before retention, are absent).
    pub periods: u64,
    pub rows: Vec<StatisticsRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatisticsRow {
    pub period_start: String,
    /// What the row covers: `area` (a postcode4, a two-digit region, `unknown`, `rest` for
    /// everyone not in another row of the period, or `*`) and/or `profile` (a profile,
    /// `unknown`, or `*` for merged profiles), as the grouping has them.
    pub group: BTreeMap<String, String>,
    pub connections: u32,
    /// Sum of consumption in `unit`.
    pub consumption: u64,
}

/// Body of `PUT /v1/connections/{ean}`. No other fields are accepted. An objection to
/// analytical use is not the CRM's to send: a body with `analytics` is refused (the privacy
/// officer records it with `PUT /v1/subjects/{ean}/objection`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    /// `off`, `standard`, `daily` or `interval`.
    #[schema(value_type = ConsentParam, inline)]
    pub consent: String,
    /// Four-digit postcode area, 1000 to 9999, e.g. `1234`.
    #[schema(pattern = "^[1-9][0-9]{3}$", min_length = 4, max_length = 4)]
    pub postcode4: Option<String>,
    /// Consumption profile, e.g. `E1A`: 1 to 8 letters and digits.
    #[schema(pattern = "^[A-Za-z0-9]{1,8}$", min_length = 1, max_length = 8)]
    pub profile: Option<String>,
}

impl ConnectionBody {
    pub const FIELDS: [&'static str; 3] = ["consent", "postcode4", "profile"];
    /// Fields of earlier versions that are refused with a message saying where they went.
    pub const RETIRED: [(&'static str, &'static str); 1] = [(
        "analytics",
        "analytics is no longer part of a connection: an objection to analytical use is the \
         privacy officer's, recorded with PUT /v1/subjects/{ean}/objection (withdrawn with \
         DELETE); send consent, postcode4 and profile only",
    )];
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ConnectionOut {
    pub consent: String,
    pub postcode4: Option<String>,
    pub profile: Option<String>,
}

impl From<&Connection> for ConnectionOut {
    fn from(c: &Connection) -> ConnectionOut {
        ConnectionOut {
            consent: c.consent.as_str().to_string(),
            postcode4: c.postcode4.map(|p| p.to_string()),
            profile: c.profile.as_ref().map(|p| p.as_str().to_string()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionResponse {
    pub pseudonym: String,
    pub connection: ConnectionOut,
    /// What a lowered consent removed (null when nothing had to go).
    pub removed: Option<ReceiptOut>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadingOut {
    pub obis: String,
    pub time: String,
    /// Decimal, in `unit`, as published.
    pub value: String,
    pub unit: String,
    /// When the metering company's correction set this value (RFC 3339); absent for a
    /// reading never corrected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrected_at: Option<String>,
}

impl From<&Reading> for ReadingOut {
    fn from(r: &Reading) -> ReadingOut {
        ReadingOut {
            obis: r.register.obis().to_string(),
            time: r.time.to_string(),
            value: format_milli(r.value),
            unit: r.register.unit().label().to_string(),
            corrected_at: None,
        }
    }
}

impl ReadingOut {
    /// A reading of the subject export, with when it was corrected, if it was.
    pub fn exported(r: &Reading, corrected_at: Option<jiff::Timestamp>) -> ReadingOut {
        ReadingOut {
            corrected_at: corrected_at.map(|t| t.to_string()),
            ..ReadingOut::from(r)
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ExportReadings {
    pub interval: Vec<ReadingOut>,
    pub day: Vec<ReadingOut>,
    pub month: Vec<ReadingOut>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportResponse {
    /// The pseudonym under the current key version.
    pub pseudonym: String,
    /// The pseudonyms under every key version that was searched.
    pub pseudonyms: Vec<String>,
    pub connection: Option<ConnectionOut>,
    /// An objection to analytical use is in force (recorded by the privacy officer).
    pub objection: bool,
    /// Erased and not registered again since.
    pub erased: bool,
    /// Readings before this instant (RFC 3339) serve billing only and are in no statistic:
    /// set by an erasure, consent `off` or a withdrawn objection; null when never set.
    pub sealed_before: Option<String>,
    /// Pseudonyms of the meters seen on this connection.
    pub meters: Vec<String>,
    pub readings: ExportReadings,
}

/// The subject's privacy state after `PUT` or `DELETE /v1/subjects/{ean}/objection`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ObjectionResponse {
    /// The pseudonym under the current key version.
    pub pseudonym: String,
    /// The pseudonyms under every key version the objection was recorded under.
    pub pseudonyms: Vec<String>,
    /// An objection to analytical use is in force: the subject keeps its billing readings
    /// and is in no statistic frozen from now on. CRM updates do not change it.
    pub objection: bool,
    /// Erased and not registered again since.
    pub erased: bool,
    /// Readings before this instant (RFC 3339) serve billing only and are in no statistic,
    /// whatever the state becomes later (a withdrawn objection sets it); null when never set.
    pub sealed_before: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DeletedOut {
    pub interval: u64,
    pub day: u64,
    pub month: u64,
    pub connection: u64,
    pub meters: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KeptOut {
    pub tier: String,
    pub count: u64,
    pub reason: String,
    /// Local date on which the last kept reading expires.
    pub until: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReceiptOut {
    pub pseudonym: String,
    pub deleted: DeletedOut,
    pub kept: Vec<KeptOut>,
}

impl ReceiptOut {
    pub fn new(p: Pseudonym, r: &ErasureReceipt, calendar: &Calendar) -> ReceiptOut {
        ReceiptOut {
            pseudonym: p.to_string(),
            deleted: DeletedOut {
                interval: r.deleted.interval,
                day: r.deleted.day,
                month: r.deleted.month,
                connection: r.connection,
                meters: r.meters,
            },
            kept: r
                .kept
                .iter()
                .map(|k| KeptOut {
                    tier: k.tier.as_str().to_string(),
                    count: k.count,
                    reason: k.reason.clone(),
                    until: calendar.date_of(k.until).to_string(),
                })
                .collect(),
        }
    }
}

/// Body of `POST /v1/backups`. No other fields are accepted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// Name of the backup: a new child of the configured `[backup] dir` (1 to 64 letters,
    /// digits, `.`, `_` or `-`, not starting with `.`). On the store's file system the
    /// backup hard-links the immutable files and takes little space.
    #[schema(
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
}

impl BackupRequest {
    pub const FIELDS: [&'static str; 1] = ["name"];

    /// Whether `name` is a safe child name: no separator, no `..`, no hidden file.
    pub fn valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackupResponse {
    pub path: String,
    pub files: u64,
    pub bytes: u64,
    pub millis: u64,
}
