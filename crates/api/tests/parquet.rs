//! `format=parquet` against the running API (over `MemStore`): the file, read back by a
//! reader that is not ours where the machine has one (pyarrow or DuckDB under python3 or the
//! project's venv) and always by the `parquet` crate's own reader, gives the JSON's figures,
//! and its key-value metadata the JSON's other fields.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;

use bytes::Bytes;
use common::{Api, ean};
use jiff::Timestamp;
use meterstand_api::Role;
use meterstand_model::ConsentLevel;
use parquet::basic::{LogicalType, TimeUnit, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.apache.parquet";
const COLUMNS: [&str; 6] = [
    "period_start",
    "area",
    "profile",
    "connections",
    "consumption",
    "unit",
];

/// A file read back: key-value metadata and, per column, its values as JSON (timestamps as
/// milliseconds since the epoch, nulls as null).
#[derive(Debug, PartialEq)]
struct Table {
    metadata: BTreeMap<String, String>,
    columns: BTreeMap<String, Vec<Value>>,
}

/// What the JSON answer says, in the same terms.
fn expected(v: &Value, columns: &[&str], metadata: &[&str]) -> Table {
    let rows = v["rows"].as_array().expect("rows");
    let mut out = BTreeMap::new();
    for name in columns {
        let values = rows
            .iter()
            .map(|r| match *name {
                "period_start" => {
                    let t = Timestamp::from_str(r["period_start"].as_str().expect("start"))
                        .expect("rfc 3339");
                    json!(t.as_millisecond())
                }
                "area" | "profile" => r["group"][name].clone(),
                "unit" => v["unit"].clone(),
                other => r[other].clone(),
            })
            .collect();
        out.insert(name.to_string(), values);
    }
    let metadata = metadata
        .iter()
        .map(|k| {
            let value = match &v[k] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.to_string(), value)
        })
        .collect();
    Table {
        metadata,
        columns: out,
    }
}

/// The `parquet` crate's reader; also checks the column types.
fn read_own(body: &[u8]) -> Table {
    let reader = SerializedFileReader::new(Bytes::copy_from_slice(body)).expect("parquet file");
    let file = reader.metadata().file_metadata();
    let schema = file.schema_descr();
    for i in 0..schema.num_columns() {
        let c = schema.column(i);
        let (physical, logical) = (c.physical_type(), c.logical_type_ref());
        match c.name() {
            "period_start" => {
                assert_eq!(physical, PhysicalType::INT64);
                assert_eq!(
                    logical,
                    Some(&LogicalType::timestamp(true, TimeUnit::MILLIS))
                );
                assert_eq!(c.max_def_level(), 0, "period_start is never null");
            }
            "connections" | "consumption" => assert_eq!(physical, PhysicalType::INT64),
            "area" | "profile" => {
                assert_eq!(logical, Some(&LogicalType::String));
                assert_eq!(c.max_def_level(), 1, "{} may be null", c.name());
            }
            "unit" => assert_eq!(logical, Some(&LogicalType::String)),
            other => panic!("unexpected column {other}"),
        }
    }
    let metadata = file
        .key_value_metadata()
        .into_iter()
        .flatten()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    let mut columns: BTreeMap<String, Vec<Value>> = (0..schema.num_columns())
        .map(|i| (schema.column(i).name().to_string(), Vec::new()))
        .collect();
    for row in reader.get_row_iter(None).expect("rows") {
        for (name, field) in row.expect("row").get_column_iter() {
            let value = match field {
                Field::TimestampMillis(ms) | Field::Long(ms) => json!(ms),
                Field::Str(s) => json!(s),
                Field::Null => Value::Null,
                other => panic!("{name}: unexpected {other:?}"),
            };
            columns.get_mut(name).expect("column").push(value);
        }
    }
    Table { metadata, columns }
}

/// pyarrow, else DuckDB, under `python3` or the project's venv: the first that imports.
fn foreign_reader() -> Option<(PathBuf, &'static str)> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    let mut pythons = vec![PathBuf::from("python3")];
    if let Some(cache) = cache {
        pythons.push(cache.join("meterstand/venv/bin/python"));
    }
    for module in ["pyarrow", "duckdb"] {
        for python in &pythons {
            let imports = Command::new(python)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if imports {
                return Some((python.clone(), module));
            }
        }
    }
    meterstand_testkit::tool_missing(
        "the foreign Parquet reader check",
        &format!(
            "neither pyarrow nor duckdb imports under {} (scripts/test installs pyarrow into \
             its venv); checking with the parquet crate's SerializedFileReader only",
            pythons
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    );
    None
}

/// Reads the file at argv[1] with argv[2] (pyarrow or duckdb) and prints, as JSON, its
/// key-value metadata, its column types and its columns (timestamps as epoch milliseconds).
const READ: &str = r#"
import json, sys
path, module = sys.argv[1], sys.argv[2]
if module == "pyarrow":
    import pyarrow, pyarrow.compute as pc, pyarrow.parquet as pq
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (pq.read_metadata(path).metadata or {}).items()}
    types = {f.name: str(f.type) for f in table.schema}
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        if pyarrow.types.is_timestamp(col.type):
            col = col.cast(pyarrow.int64())
        columns[name] = col.to_pylist()
    reader = "pyarrow " + pyarrow.__version__
else:
    import duckdb
    con = duckdb.connect()
    rel = con.execute("SELECT * FROM read_parquet(?)", [path])
    names = [d[0] for d in rel.description]
    types = {n: str(t) for n, t in con.execute(
        "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))", [path]
    ).fetchall()}
    select = ", ".join(
        f'epoch_ms("{n}")' if "TIMESTAMP" in types[n] else f'"{n}"' for n in names
    )
    rows = con.execute(f"SELECT {select} FROM read_parquet(?)", [path]).fetchall()
    columns = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    meta = {}
    for k, v in con.execute("SELECT key, value FROM parquet_kv_metadata(?)", [path]).fetchall():
        meta[bytes(k).decode()] = bytes(v).decode()
    reader = "duckdb " + duckdb.__version__
json.dump({"reader": reader, "metadata": meta, "types": types, "columns": columns}, sys.stdout)
"#;

/// The file read by pyarrow or DuckDB; its column types checked for a UTC timestamp.
fn read_foreign(python: &PathBuf, module: &str, body: &[u8]) -> Table {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("answer.parquet");
    std::fs::write(&path, body).expect("write");
    let out = tokio::task::block_in_place(|| {
        Command::new(python)
            .args(["-c", READ])
            .arg(&path)
            .arg(module)
            .output()
    })
    .expect("python");
    assert!(
        out.status.success(),
        "{module}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("reader's json");
    println!("read back with {}", v["reader"]);
    let start = v["types"]["period_start"]
        .as_str()
        .expect("type")
        .to_lowercase();
    assert!(
        start.contains("timestamp") && (start.contains("utc") || start.contains("time zone")),
        "period_start is read as {start}"
    );
    for (name, t) in v["types"].as_object().expect("types") {
        let t = t.as_str().expect("type").to_lowercase();
        match name.as_str() {
            "connections" | "consumption" => {
                assert!(t == "int64" || t == "bigint", "{name}: {t}")
            }
            "area" | "profile" | "unit" => {
                assert!(t == "string" || t == "varchar", "{name}: {t}")
            }
            _ => {}
        }
    }
    let metadata = v["metadata"]
        .as_object()
        .expect("metadata")
        .iter()
        .filter(|(k, _)| !k.starts_with("ARROW:"))
        .map(|(k, v)| (k.clone(), v.as_str().expect("text").to_string()))
        .collect();
    let columns = v["columns"]
        .as_object()
        .expect("columns")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_array().expect("values").clone()))
        .collect();
    Table { metadata, columns }
}

/// JSON and Parquet of the same query; every reader at hand must give the JSON.
async fn compare(api: &Api, reader: &Option<(PathBuf, &'static str)>, query: &str) -> usize {
    let sep = if query.contains('?') { '&' } else { '?' };
    let v = api.json(Role::Analyst, query).await;
    let (status, content_type, body) = api
        .get_bytes(Role::Analyst, &format!("{query}{sep}format=parquet"))
        .await;
    assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, CONTENT_TYPE);
    assert_eq!(&body[..4], b"PAR1");
    assert_eq!(&body[body.len() - 4..], b"PAR1");
    let metadata = [
        "unit",
        "granularity",
        "register",
        "group_by",
        "min_group_size",
        "periods",
    ];
    let want = expected(&v, &COLUMNS, &metadata);
    assert_eq!(read_own(&body), want, "{query}: the parquet crate's reader");
    if let Some((python, module)) = reader {
        assert_eq!(
            read_foreign(python, module, &body),
            want,
            "{query}: {module}"
        );
    }
    v["rows"].as_array().map_or(0, Vec::len)
}

/// Households in two postcodes and two profiles, frozen: every grouping has rows.
async fn populated() -> Api {
    let api = Api::start().await;
    let mut n = 0;
    for (postcode, profile, count, consent) in [
        (1000, "E1A", 12, ConsentLevel::Interval),
        (1000, "E1B", 1, ConsentLevel::Daily),
        (2000, "E1A", 10, ConsentLevel::Interval),
        (2000, "E2B", 11, ConsentLevel::Daily),
    ] {
        for _ in 0..count {
            n += 1;
            api.register(&ean(n), consent, postcode, profile);
            api.write_day(&ean(n), 10 + n).await;
        }
    }
    api.freeze();
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_statistics_read_back_give_the_json_figures() {
    let api = populated().await;
    let reader = foreign_reader();
    let mut seen = 0;
    for granularity in ["day", "interval"] {
        for group_by in ["", "postcode4", "profile", "region", "postcode4,profile"] {
            for register in ["import", "export"] {
                seen += compare(
                    &api,
                    &reader,
                    &format!(
                        "/v1/statistics?from=2026-11-01&to=2026-11-04&granularity={granularity}\
                         &register={register}&group_by={group_by}"
                    ),
                )
                .await;
            }
        }
    }
    assert!(seen > 96 * 5, "the queries had rows: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_of_an_empty_range_is_a_valid_empty_file() {
    let api = populated().await;
    let reader = foreign_reader();
    for query in [
        "/v1/statistics?from=2026-11-02&to=2026-11-02&group_by=postcode4",
        "/v1/statistics?from=2025-01-01&to=2025-01-02&granularity=interval",
    ] {
        assert_eq!(compare(&api, &reader, query).await, 0, "{query}");
    }
    let (_, _, body) = api
        .get_bytes(
            Role::Analyst,
            "/v1/statistics?from=2026-11-02&to=2026-11-02&format=parquet",
        )
        .await;
    let table = read_own(&body);
    assert_eq!(table.columns.len(), COLUMNS.len());
    assert!(table.columns.values().all(Vec::is_empty));
    assert_eq!(table.metadata["min_group_size"], "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_format_lists_json_csv_and_parquet() {
    let api = Api::start().await;
    let query = "/v1/statistics?from=2026-11-02&to=2026-11-03&format=xml";
    let (status, text) = api.get(Role::Analyst, query).await;
    assert_eq!(status, 400, "{query}");
    let v: Value = serde_json::from_str(&text).expect("error body");
    assert_eq!(
        v["error"]["message"], "format must be json, csv or parquet",
        "{query}: {v}"
    );
    // The subject export's records are of several shapes: JSON or CSV only.
    let (status, text) = api
        .get(
            Role::PrivacyOfficer,
            &format!("/v1/subjects/{}/export?format=parquet", ean(1).expose()),
        )
        .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&text).expect("error body");
    assert_eq!(v["error"]["message"], "format must be json or csv", "{v}");
}
