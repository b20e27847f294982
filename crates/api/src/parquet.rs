//! Parquet bodies of `/v1/statistics`: the columns of the CSV with real types, and everything the JSON says beside the rows in the file's
//! key-value metadata, so pandas, Polars and DuckDB read it unchanged and lose nothing.
//!
//! Why the low-level `SerializedFileWriter` and a schema in text, not arrow: a handful of
//! flat columns do not need arrow's tree, and RocksDB's build shares crates with whatever
//! we add (a new feature on one of them rebuilds RocksDB). Why these settings: Snappy is
//! pure Rust without dependencies and the codec every reader has; the writer's defaults
//! otherwise (version 1.0 data pages, dictionaries, page statistics) are what older readers
//! understand. `period_start` is `TIMESTAMP(MILLIS, true)`: an instant in UTC, as the JSON's
//! RFC 3339 text is.

use std::str::FromStr;
use std::sync::Arc;

use ::parquet::basic::Compression;
use ::parquet::column::writer::ColumnWriter;
use ::parquet::data_type::ByteArray;
use ::parquet::errors::ParquetError;
use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::WriterProperties;
use ::parquet::file::writer::SerializedFileWriter;
use ::parquet::schema::parser::parse_message_type;
use jiff::Timestamp;

use crate::dto::StatisticsResponse;

/// The media type registered for Parquet.
pub const CONTENT_TYPE: &str = "application/vnd.apache.parquet";

/// Rows per row group: readers parallelise and skip by row group; the answers here are
/// bounded by the maximum ranges, so this mostly keeps one group's pages within memory.
const ROW_GROUP: usize = 1 << 20;

const STATISTICS_SCHEMA: &str = "
message statistics {
  REQUIRED INT64 period_start (TIMESTAMP(MILLIS,true));
  OPTIONAL BYTE_ARRAY area (STRING);
  OPTIONAL BYTE_ARRAY profile (STRING);
  REQUIRED INT64 connections;
  REQUIRED INT64 consumption;
  REQUIRED BYTE_ARRAY unit (STRING);
}";

/// One column's values, in the schema's order. `None` is a null (the group has no such key).
enum Column<'a> {
    Int64(Vec<i64>),
    Text(Vec<Option<&'a str>>),
}

/// Frozen statistics: `period_start, area, profile, connections, consumption, unit`; `area`
/// and `profile` are null where the grouping does not have them (empty in the CSV).
pub fn statistics(r: &StatisticsResponse) -> Result<Vec<u8>, ParquetError> {
    statistics_in_groups(r, ROW_GROUP)
}

/// [`statistics`] in row groups of at most `row_group` rows.
fn statistics_in_groups(r: &StatisticsResponse, row_group: usize) -> Result<Vec<u8>, ParquetError> {
    let mut starts = Starts::default();
    let columns = [
        Column::Int64(
            r.rows
                .iter()
                .map(|row| starts.millis(&row.period_start))
                .collect::<Result<_, _>>()?,
        ),
        Column::Text(
            r.rows
                .iter()
                .map(|row| row.group.get("area").map(String::as_str))
                .collect(),
        ),
        Column::Text(
            r.rows
                .iter()
                .map(|row| row.group.get("profile").map(String::as_str))
                .collect(),
        ),
        Column::Int64(
            r.rows
                .iter()
                .map(|row| i64::from(row.connections))
                .collect(),
        ),
        Column::Int64(
            r.rows
                .iter()
                .map(|row| int64(row.consumption))
                .collect::<Result<_, _>>()?,
        ),
        Column::Text(vec![Some(r.unit.as_str()); r.rows.len()]),
    ];
    let metadata = [
        ("unit", r.unit.clone()),
        ("granularity", r.granularity.clone()),
        ("register", r.register.clone()),
        ("group_by", r.group_by.clone()),
        ("min_group_size", r.min_group_size.to_string()),
        ("periods", r.periods.to_string()),
    ];
    write(
        STATISTICS_SCHEMA,
        r.rows.len(),
        &columns,
        &metadata,
        row_group,
    )
}

fn int64(v: u64) -> Result<i64, ParquetError> {
    i64::try_from(v).map_err(|_| ParquetError::General("consumption exceeds INT64".into()))
}

/// Milliseconds since the epoch of the rows' `period_start` texts, which repeat for every
/// row of a period: parsed once per period.
#[derive(Default)]
struct Starts<'a> {
    last: Option<(&'a str, i64)>,
}

impl<'a> Starts<'a> {
    fn millis(&mut self, text: &'a str) -> Result<i64, ParquetError> {
        if let Some((t, ms)) = self.last
            && t == text
        {
            return Ok(ms);
        }
        let ms = Timestamp::from_str(text)
            .map_err(|e| ParquetError::General(format!("period_start: {e}")))?
            .as_millisecond();
        self.last = Some((text, ms));
        Ok(ms)
    }
}

fn write(
    schema: &str,
    rows: usize,
    columns: &[Column<'_>],
    metadata: &[(&str, String)],
    row_group: usize,
) -> Result<Vec<u8>, ParquetError> {
    let schema = Arc::new(parse_message_type(schema)?);
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(
            metadata
                .iter()
                .map(|(k, v)| KeyValue::new((*k).to_string(), v.clone()))
                .collect(),
        ))
        .build();
    let mut file = SerializedFileWriter::new(Vec::new(), schema, Arc::new(properties))?;
    let mut start = 0;
    while start < rows {
        let end = rows.min(start.saturating_add(row_group.max(1)));
        let mut group = file.next_row_group()?;
        for column in columns {
            let Some(mut out) = group.next_column()? else {
                return Err(ParquetError::General("more columns than the schema".into()));
            };
            match (column, out.untyped()) {
                (Column::Int64(values), ColumnWriter::Int64ColumnWriter(w)) => {
                    w.write_batch(&values[start..end], None, None)?;
                }
                (Column::Text(values), ColumnWriter::ByteArrayColumnWriter(w)) => {
                    let values = &values[start..end];
                    let present: Vec<ByteArray> = values
                        .iter()
                        .flatten()
                        .map(|v| ByteArray::from(*v))
                        .collect();
                    if w.get_descriptor().max_def_level() > 0 {
                        let defined: Vec<i16> =
                            values.iter().map(|v| i16::from(v.is_some())).collect();
                        w.write_batch(&present, Some(&defined), None)?;
                    } else if present.len() == values.len() {
                        w.write_batch(&present, None, None)?;
                    } else {
                        return Err(ParquetError::General("null in a required column".into()));
                    }
                }
                _ => return Err(ParquetError::General("column type differs".into())),
            }
            out.close()?;
        }
        if group.next_column()?.is_some() {
            return Err(ParquetError::General(
                "fewer columns than the schema".into(),
            ));
        }
        group.close()?;
        start = end;
    }
    file.into_inner()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ::parquet::file::reader::{FileReader, SerializedFileReader};
    use ::parquet::record::Field;
    use bytes::Bytes;

    use super::*;
    use crate::dto::StatisticsRow;

    fn read(body: Vec<u8>) -> (BTreeMap<String, String>, Vec<Vec<Field>>) {
        let reader = SerializedFileReader::new(Bytes::from(body)).expect("parquet");
        let meta = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
            .collect();
        let rows = reader
            .get_row_iter(None)
            .expect("rows")
            .map(|r| {
                r.expect("row")
                    .get_column_iter()
                    .map(|(_, f)| f.clone())
                    .collect()
            })
            .collect();
        (meta, rows)
    }

    fn statistics_of(rows: Vec<StatisticsRow>) -> StatisticsResponse {
        StatisticsResponse {
            unit: "Wh".into(),
            granularity: "day".into(),
            register: "import".into(),
            group_by: "postcode4".into(),
            min_group_size: 10,
            periods: 2,
            rows,
        }
    }

    #[test]
    fn statistics_rows_and_metadata_read_back() {
        let row = |start: &str, area: Option<&str>, n: u32, c: u64| StatisticsRow {
            period_start: start.into(),
            group: area
                .map(|a| BTreeMap::from([("area".to_string(), a.to_string())]))
                .unwrap_or_default(),
            connections: n,
            consumption: c,
        };
        let body = statistics(&statistics_of(vec![
            row("2026-11-01T23:00:00Z", Some("1000"), 12, 3_000),
            row("2026-11-01T23:00:00Z", None, 10, 7),
            row("2026-11-02T23:00:00Z", Some("rest"), 11, 0),
        ]))
        .expect("write");
        assert_eq!(&body[..4], b"PAR1");
        let (meta, rows) = read(body);
        assert_eq!(meta["unit"], "Wh");
        assert_eq!(meta["group_by"], "postcode4");
        assert_eq!(meta["min_group_size"], "10");
        assert_eq!(meta["periods"], "2");
        assert_eq!(rows.len(), 3);
        let first = Timestamp::from_str("2026-11-01T23:00:00Z").expect("t");
        assert_eq!(
            rows[0],
            [
                Field::TimestampMillis(first.as_millisecond()),
                Field::Str("1000".into()),
                Field::Null,
                Field::Long(12),
                Field::Long(3_000),
                Field::Str("Wh".into()),
            ]
        );
        assert_eq!(rows[1][1], Field::Null);
        assert_eq!(rows[2][4], Field::Long(0));
    }

    #[test]
    fn no_rows_is_a_valid_empty_file() {
        let (meta, rows) = read(statistics(&statistics_of(Vec::new())).expect("write"));
        assert!(rows.is_empty());
        assert_eq!(meta["granularity"], "day");
    }

    #[test]
    fn row_groups_split_long_answers_and_bad_values_are_errors() {
        let row = |i: u64| StatisticsRow {
            period_start: "2026-11-01T23:00:00Z".into(),
            group: BTreeMap::new(),
            connections: 10,
            consumption: i,
        };
        let mut r = statistics_of((0..5).map(row).collect());
        let body = statistics_in_groups(&r, 2).expect("write");
        let reader = SerializedFileReader::new(Bytes::from(body)).expect("parquet");
        assert_eq!(reader.metadata().num_row_groups(), 3);
        assert_eq!(reader.metadata().file_metadata().num_rows(), 5);
        let (_, rows) = read(statistics_in_groups(&r, 2).expect("write"));
        let consumption: Vec<&Field> = rows.iter().map(|r| &r[4]).collect();
        assert_eq!(
            consumption,
            (0..5)
                .map(Field::Long)
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>()
        );
        r.rows.truncate(1);
        r.rows[0].consumption = u64::MAX;
        assert!(statistics(&r).is_err());
        r.rows[0].consumption = 1;
        r.rows[0].period_start = "yesterday".into();
        assert!(statistics(&r).is_err());
    }
}
