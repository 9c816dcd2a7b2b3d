//! Demand series from history: request counts per time bucket, computed by DataFusion SQL over
//! the history files, with empty buckets filled with zero.
//!
//! Inputs (`DemandSource`):
//! - **events:** a directory, a file or a glob of Parquet or Arrow IPC files with one row per
//!   request. The timestamp column (`ts` by default) may be a timestamp, an RFC 3339 string or
//!   epoch milliseconds; an optional grouping column splits the counts (per request type, say).
//!   Any other columns are ignored, so files that are not surgeguard's work too.
//! - **series:** a pre-aggregated CSV or Parquet file of `ts,value` rows; values in one bucket
//!   are summed.
//!
//! The query bins with `date_bin` at the resolution, from the Unix epoch (so 5-minute buckets
//! start at :00, :05, …, in UTC).

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::error::DataFusionError;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

use futures_util::FutureExt;

use crate::forecast::series::{BadResolution, Series};
use crate::wire::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: no column {column:?} (columns: {available})")]
    MissingColumn { path: String, column: String, available: String },
    #[error("{path}: column {column:?} is {found}; expected a timestamp, an RFC 3339 string or epoch milliseconds")]
    NotATime { path: String, column: String, found: String },
    #[error("{path}: no rows")]
    NoData { path: String },
    #[error(transparent)]
    Resolution(#[from] BadResolution),
    #[error("query: {0}")]
    Query(#[from] DataFusionError),
    #[error("reading the query's result: {0}")]
    Arrow(#[from] ArrowError),
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemandSource {
    /// One row per request.
    Events { path: String, ts_column: String, group_column: Option<String> },
    /// Pre-aggregated `ts,value` rows.
    Series { path: String, ts_column: String, value_column: String },
}

fn file_kind(path: &str) -> &'static str {
    let p = path.to_ascii_lowercase();
    if p.ends_with(".csv") {
        "csv"
    } else if p.ends_with(".arrow") || p.ends_with(".ipc") || p.ends_with(".feather") {
        "arrow"
    } else {
        "parquet"
    }
}

async fn register(ctx: &SessionContext, path: &str) -> Result<(), DemandError> {
    let read = |e: DataFusionError| DemandError::Read { path: path.to_string(), message: e.to_string() };
    let p = Path::new(path);
    // A directory is read whole, every Parquet file under it (its events.csv of external factors
    // is not history); DataFusion takes a directory by its trailing slash. A file or a glob is
    // read by its extension (`dir/*` has none and takes every file).
    let (path, kind, ext) = if p.is_dir() {
        (format!("{}/", path.trim_end_matches('/')), "parquet", ".parquet".to_string())
    } else {
        (path.to_string(), file_kind(path), p.extension().and_then(|e| e.to_str()).map(|e| format!(".{e}")).unwrap_or_default())
    };
    let path = path.as_str();
    match kind {
        "csv" => ctx.register_csv("history", path, CsvReadOptions::new().has_header(true)).await.map_err(read),
        "arrow" => ctx.register_arrow("history", path, ArrowReadOptions { file_extension: &ext, ..Default::default() }).await.map_err(read),
        _ => ctx.register_parquet("history", path, ParquetReadOptions { file_extension: &ext, ..Default::default() }).await.map_err(read),
    }
}

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL expression of a column as a UTC timestamp in milliseconds without time zone.
fn time_expr(path: &str, column: &str, data_type: &DataType) -> Result<String, DemandError> {
    let c = ident(column);
    let ts = match data_type {
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => c,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => format!("to_timestamp({c})"),
        DataType::Int64 | DataType::Int32 | DataType::UInt64 | DataType::UInt32 => format!("to_timestamp_millis({c})"),
        other => return Err(DemandError::NotATime { path: path.into(), column: column.into(), found: other.to_string() }),
    };
    Ok(format!("arrow_cast({ts}, 'Timestamp(Millisecond, None)')"))
}

/// Checks that a file named `.parquet` has Parquet's magic at both ends and a footer that fits
/// in the file. (The parquet crate panics on some corrupted footers instead of failing.)
fn check_parquet(path: &Path) -> Result<(), DemandError> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |message: &str| DemandError::Read { path: path.display().to_string(), message: message.to_string() };
    let mut f = std::fs::File::open(path).map_err(|e| bad(&e.to_string()))?;
    let len = f.metadata().map_err(|e| bad(&e.to_string()))?.len();
    if len < 12 {
        return Err(bad("not a Parquet file: too short"));
    }
    let mut head = [0u8; 4];
    let mut tail = [0u8; 8];
    f.read_exact(&mut head).map_err(|e| bad(&e.to_string()))?;
    f.seek(SeekFrom::End(-8)).and_then(|_| f.read_exact(&mut tail)).map_err(|e| bad(&e.to_string()))?;
    let metadata_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if &head != b"PAR1" || &tail[4..] != b"PAR1" {
        return Err(bad("not a Parquet file: no PAR1 magic at its start and end"));
    }
    if metadata_len + 12 > len {
        return Err(bad(&format!("corrupted Parquet file: its footer claims {metadata_len} bytes of metadata in a {len}-byte file")));
    }
    Ok(())
}

/// The local Parquet files a path names (the file, or every `.parquet` file under a directory;
/// globs are left to DataFusion).
fn parquet_files(path: &Path) -> Vec<std::path::PathBuf> {
    if path.is_file() {
        return if file_kind(&path.to_string_lossy()) == "parquet" { vec![path.to_path_buf()] } else { Vec::new() };
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

/// Counts (or sums) per bucket of `step_ms`: per group when the source has a grouping column
/// (the key is the group's value), else under the key "".
pub async fn aggregate(source: &DemandSource, step_ms: i64) -> Result<BTreeMap<String, Series>, DemandError> {
    let path = match source {
        DemandSource::Events { path, .. } | DemandSource::Series { path, .. } => path.clone(),
    };
    for f in parquet_files(Path::new(&path)) {
        check_parquet(&f)?;
    }
    // A reader that panics on a file it should have refused is an error about that input, not a
    // crash.
    match std::panic::AssertUnwindSafe(aggregate_checked(source, step_ms)).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(DemandError::Read { path, message: format!("the reader failed on this input: {message}") })
        }
    }
}

async fn aggregate_checked(source: &DemandSource, step_ms: i64) -> Result<BTreeMap<String, Series>, DemandError> {
    let ctx = SessionContext::new();
    let (path, ts_column) = match source {
        DemandSource::Events { path, ts_column, .. } | DemandSource::Series { path, ts_column, .. } => (path.as_str(), ts_column.as_str()),
    };
    register(&ctx, path).await?;
    let schema = ctx.table("history").await.map_err(|e| DemandError::Read { path: path.into(), message: e.to_string() })?.schema().as_arrow().clone();
    let field = |name: &str| {
        schema.field_with_name(name).map(|f| f.data_type().clone()).map_err(|_| DemandError::MissingColumn {
            path: path.into(),
            column: name.into(),
            available: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
        })
    };
    let ts = time_expr(path, ts_column, &field(ts_column)?)?;
    let bucket = format!("CAST(date_bin(INTERVAL '{step_ms} milliseconds', {ts}, TIMESTAMP '1970-01-01T00:00:00') AS BIGINT)");
    let (group, value) = match source {
        DemandSource::Events { group_column: Some(g), .. } => {
            field(g)?;
            (format!("CAST({} AS VARCHAR)", ident(g)), "CAST(COUNT(*) AS DOUBLE)".to_string())
        }
        DemandSource::Events { group_column: None, .. } => ("''".to_string(), "CAST(COUNT(*) AS DOUBLE)".to_string()),
        DemandSource::Series { value_column, .. } => {
            field(value_column)?;
            ("''".to_string(), format!("SUM(CAST({} AS DOUBLE))", ident(value_column)))
        }
    };
    let sql = format!("SELECT {bucket} AS bucket, {group} AS grp, {value} AS value FROM history GROUP BY 1, 2 ORDER BY 1, 2");
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut rows: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for b in &batches {
        let buckets = cast(b.column(0), &DataType::Int64)?;
        let groups = cast(b.column(1), &DataType::Utf8)?;
        let values = cast(b.column(2), &DataType::Float64)?;
        let (Some(buckets), Some(groups), Some(values)) =
            (buckets.as_any().downcast_ref::<Int64Array>(), groups.as_any().downcast_ref::<StringArray>(), values.as_any().downcast_ref::<Float64Array>())
        else {
            return Err(DemandError::Arrow(ArrowError::CastError("unexpected result columns".into())));
        };
        for i in 0..b.num_rows() {
            // Rows whose time did not parse have no bucket: they are not demand.
            if buckets.is_null(i) {
                continue;
            }
            let (t, g, v) = (buckets.value(i), if groups.is_null(i) { "" } else { groups.value(i) }, values.value(i));
            first = first.min(t);
            last = last.max(t);
            rows.entry(g.to_string()).or_default().push((t, v));
        }
    }
    if rows.is_empty() {
        return Err(DemandError::NoData { path: path.into() });
    }
    let len = ((last - first) / step_ms + 1) as usize;
    Ok(rows
        .into_iter()
        .map(|(g, points)| {
            let mut values = vec![0.0; len];
            for (t, v) in points {
                values[((t - first) / step_ms) as usize] += v;
            }
            (g, Series { start: Millis(first), step_ms, values })
        })
        .collect())
}

/// Request events read back from history files, in time order (ties by id), a batch at a time:
/// the input of `whatif`. Columns: the timestamp (as `aggregate` reads it), `user_id` (required),
/// `id`, `tier`, `request_type` (empty when absent: the pipeline's defaults apply) and `cost`
/// (1 when absent or null). Rows without a time are skipped; a row without a user is an error.
/// The sort is DataFusion's, in memory.
pub struct RequestReader {
    stream: datafusion::physical_plan::SendableRecordBatchStream,
    path: String,
    /// Rows in the files (counted before reading).
    pub total: u64,
    read: u64,
}

impl RequestReader {
    pub async fn open(path: &str, ts_column: &str) -> Result<Self, DemandError> {
        for f in parquet_files(Path::new(path)) {
            check_parquet(&f)?;
        }
        let ctx = SessionContext::new();
        register(&ctx, path).await?;
        let schema = ctx.table("history").await.map_err(|e| DemandError::Read { path: path.into(), message: e.to_string() })?.schema().as_arrow().clone();
        let has = |name: &str| schema.field_with_name(name).is_ok();
        let missing = |name: &str| DemandError::MissingColumn {
            path: path.into(),
            column: name.into(),
            available: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
        };
        let ts_type = schema.field_with_name(ts_column).map(|f| f.data_type().clone()).map_err(|_| missing(ts_column))?;
        if !has("user_id") {
            return Err(missing("user_id"));
        }
        let ts = time_expr(path, ts_column, &ts_type)?;
        let text = |name: &str| if has(name) { format!("CAST({} AS VARCHAR)", ident(name)) } else { "''".to_string() };
        let cost = if has("cost") { format!("CAST({} AS BIGINT)", ident("cost")) } else { "1".to_string() };
        let sql = format!(
            "SELECT CAST({ts} AS BIGINT) AS ts_ms, {} AS id, {} AS user_id, {} AS tier, {} AS request_type, {cost} AS cost \
             FROM history WHERE {ts} IS NOT NULL ORDER BY ts_ms, id",
            text("id"),
            text("user_id"),
            text("tier"),
            text("request_type"),
        );
        let count = ctx.sql("SELECT COUNT(*) FROM history").await?.collect().await?;
        let total = count
            .first()
            .and_then(|b| cast(b.column(0), &DataType::Int64).ok())
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)))
            .unwrap_or(0);
        let stream = ctx.sql(&sql).await?.execute_stream().await?;
        Ok(RequestReader { stream, path: path.to_string(), total: total.max(0) as u64, read: 0 })
    }

    /// Appends the next batch of requests to `out`; false at the end. A row with a cost below 1
    /// is an error naming it.
    pub async fn next_batch(&mut self, out: &mut Vec<crate::wire::events::RequestEvent>) -> Result<bool, DemandError> {
        use futures_util::StreamExt;
        let Some(batch) = self.stream.next().await else { return Ok(false) };
        let b = batch?;
        let col = |i: usize, t: &DataType| cast(b.column(i), t);
        let (ts, cost) = (col(0, &DataType::Int64)?, col(5, &DataType::Int64)?);
        let texts = [col(1, &DataType::Utf8)?, col(2, &DataType::Utf8)?, col(3, &DataType::Utf8)?, col(4, &DataType::Utf8)?];
        let unexpected = || DemandError::Arrow(ArrowError::CastError("unexpected result columns".into()));
        let ts = ts.as_any().downcast_ref::<Int64Array>().ok_or_else(unexpected)?;
        let cost = cost.as_any().downcast_ref::<Int64Array>().ok_or_else(unexpected)?;
        let mut strs = Vec::with_capacity(4);
        for t in &texts {
            strs.push(t.as_any().downcast_ref::<StringArray>().ok_or_else(unexpected)?);
        }
        fn text(a: &StringArray, i: usize) -> &str {
            if a.is_null(i) { "" } else { a.value(i) }
        }
        for i in 0..b.num_rows() {
            self.read += 1;
            let id = text(strs[0], i);
            if strs[1].is_null(i) {
                return Err(DemandError::Read { path: self.path.clone(), message: format!("request {id:?} (row {}): no user_id", self.read) });
            }
            let units = if cost.is_null(i) { 1 } else { cost.value(i) };
            let Ok(units) = u32::try_from(units) else {
                return Err(DemandError::Read {
                    path: self.path.clone(),
                    message: format!("request {id:?} (row {}): cost {units} is not a whole number ≥ 1", self.read),
                });
            };
            if units == 0 {
                return Err(DemandError::Read { path: self.path.clone(), message: format!("request {id:?} (row {}): cost 0, expected ≥ 1", self.read) });
            }
            out.push(crate::wire::events::RequestEvent {
                id: if id.is_empty() { format!("row-{}", self.read).into() } else { id.into() },
                ts: Millis(ts.value(i)),
                user_id: text(strs[1], i).into(),
                tier: text(strs[2], i).into(),
                request_type: text(strs[3], i).into(),
                cost: units,
            });
        }
        Ok(true)
    }
}
