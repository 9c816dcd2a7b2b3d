//! Request history in Parquet: one row per request, files partitioned by date and hour.
//!
//! Schema (the columns of `RequestEvent`):
//!
//! | column | Arrow type | |
//! |---|---|---|
//! | `ts` | `Timestamp(Millisecond, "UTC")` | event time |
//! | `id` | `Utf8` | request id |
//! | `user_id` | `Utf8` | |
//! | `tier` | `Utf8` | |
//! | `request_type` | `Utf8` | |
//! | `cost` | `UInt32` | quota units |
//!
//! Layout: `DIR/date=YYYY-MM-DD/hour=HH/NAME.parquet` (Hive-style, so DataFusion, DuckDB and
//! Spark see `date` and `hour` as partition columns; surgeguard reads the directory as a whole).
//! A writer starts a new file when the hour of its events changes; events must come in time
//! order within a writer (`HistoryError::Backwards` otherwise).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringBuilder, TimestampMillisecondBuilder, UInt32Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;

use crate::wire::events::RequestEvent;
use crate::wire::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("building a record batch: {0}")]
    Arrow(#[from] ArrowError),
    #[error("event time went backwards: {next} after {last} (a history writer takes events in time order)")]
    Backwards { last: Millis, next: Millis },
    #[error("event time {0} is outside the range of dates")]
    BadTime(Millis),
}

/// The Arrow schema of a request-history file.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("tier", DataType::Utf8, false),
        Field::new("request_type", DataType::Utf8, false),
        Field::new("cost", DataType::UInt32, false),
    ]))
}

/// Rows per record batch (and so per Parquet row group at most).
const BATCH_ROWS: usize = 64 * 1024;

/// The `date=…/hour=…` directory of an event time.
pub fn partition_dir(ts: Millis) -> Result<String, HistoryError> {
    let t = chrono::DateTime::from_timestamp_millis(ts.0).ok_or(HistoryError::BadTime(ts))?;
    Ok(t.format("date=%Y-%m-%d/hour=%H").to_string())
}

struct Builders {
    ts: TimestampMillisecondBuilder,
    id: StringBuilder,
    user: StringBuilder,
    tier: StringBuilder,
    request_type: StringBuilder,
    cost: UInt32Builder,
    rows: usize,
}

impl Builders {
    fn new() -> Self {
        Builders {
            ts: TimestampMillisecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            id: StringBuilder::new(),
            user: StringBuilder::new(),
            tier: StringBuilder::new(),
            request_type: StringBuilder::new(),
            cost: UInt32Builder::with_capacity(BATCH_ROWS),
            rows: 0,
        }
    }

    fn push(&mut self, e: &RequestEvent) {
        self.ts.append_value(e.ts.0);
        self.id.append_value(&e.id);
        self.user.append_value(&e.user_id);
        self.tier.append_value(&e.tier);
        self.request_type.append_value(&e.request_type);
        self.cost.append_value(e.cost);
        self.rows += 1;
    }

    fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.user.finish()),
            Arc::new(self.tier.finish()),
            Arc::new(self.request_type.finish()),
            Arc::new(self.cost.finish()),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

/// Writes request events, in time order, into hourly Parquet files under a directory.
pub struct HistoryWriter {
    dir: PathBuf,
    /// The file name in every partition this writer writes.
    name: String,
    open: Option<(String, ArrowWriter<File>)>,
    builders: Builders,
    last: Option<Millis>,
    files: Vec<PathBuf>,
    rows: u64,
}

impl HistoryWriter {
    /// A writer of `DIR/date=…/hour=…/NAME.parquet` files. An existing file of that name is
    /// replaced (a rerun writes the same files again, never a second copy).
    pub fn new(dir: &Path, name: &str) -> Self {
        HistoryWriter { dir: dir.to_path_buf(), name: name.to_string(), open: None, builders: Builders::new(), last: None, files: Vec::new(), rows: 0 }
    }

    pub fn write(&mut self, e: &RequestEvent) -> Result<(), HistoryError> {
        if let Some(last) = self.last
            && e.ts < last
        {
            return Err(HistoryError::Backwards { last, next: e.ts });
        }
        self.last = Some(e.ts);
        let part = partition_dir(e.ts)?;
        if self.open.as_ref().is_none_or(|(p, _)| *p != part) {
            self.close_file()?;
            let dir = self.dir.join(&part);
            std::fs::create_dir_all(&dir).map_err(|source| HistoryError::Io { path: dir.clone(), source })?;
            let path = dir.join(format!("{}.parquet", self.name));
            let file = File::create(&path).map_err(|source| HistoryError::Io { path: path.clone(), source })?;
            let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
            self.open = Some((part, ArrowWriter::try_new(file, schema(), Some(props))?));
            self.files.push(path);
        }
        self.builders.push(e);
        self.rows += 1;
        if self.builders.rows >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), HistoryError> {
        if self.builders.rows == 0 {
            return Ok(());
        }
        let batch = self.builders.finish()?;
        if let Some((_, w)) = self.open.as_mut() {
            w.write(&batch)?;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), HistoryError> {
        self.flush_batch()?;
        if let Some((_, w)) = self.open.take() {
            w.close()?;
        }
        Ok(())
    }

    /// Closes the last file; returns the files written and the rows.
    pub fn finish(mut self) -> Result<(Vec<PathBuf>, u64), HistoryError> {
        self.close_file()?;
        Ok((std::mem::take(&mut self.files), self.rows))
    }
}

/// Writes `events` (in the order given) to one Parquet file at `path`, atomically: into a hidden
/// temporary file beside it, synced, then renamed over `path` (and the directory synced), so a
/// crash leaves either the whole file or none (a stray `.tmp` at most, which no reader takes).
pub fn write_file_atomic(path: &Path, events: &[RequestEvent]) -> Result<(), HistoryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HistoryError::Io { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
        let mut w = ArrowWriter::try_new(file, schema(), Some(props))?;
        let mut b = Builders::new();
        for chunk in events.chunks(BATCH_ROWS) {
            for e in chunk {
                b.push(e);
            }
            w.write(&b.finish()?)?;
        }
        let file = w.into_inner()?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if let Err(e) = written {
        // A failed write (disk full, a bad record) leaves no temporary file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename, and the `date=…/hour=…` directories it may have needed, made durable.
    for d in dir.ancestors().take(3).filter(|d| !d.as_os_str().is_empty()) {
        File::open(d).and_then(|f| f.sync_all()).map_err(io(d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts: i64, user: &str) -> RequestEvent {
        RequestEvent { id: format!("r{ts}").into(), ts: Millis(ts), user_id: user.into(), tier: "free".into(), request_type: "standard".into(), cost: 1 }
    }

    #[test]
    fn one_file_per_hour_and_events_in_time_order_only() {
        let dir = std::env::temp_dir().join(format!("sg-history-{}", std::process::id()));
        let mut w = HistoryWriter::new(&dir, "part-0");
        // 2026-11-30T08:59:59.999Z, then two events in the 09:00 hour.
        let base = 1_796_029_200_000;
        w.write(&event(base - 1, "a")).expect("write");
        w.write(&event(base, "b")).expect("write");
        w.write(&event(base + 5, "a")).expect("write");
        assert!(matches!(w.write(&event(base + 4, "c")), Err(HistoryError::Backwards { .. })));
        let (files, rows) = w.finish().expect("finish");
        assert_eq!(rows, 3);
        let names: Vec<String> = files.iter().map(|f| f.strip_prefix(&dir).expect("under dir").display().to_string()).collect();
        assert_eq!(names, ["date=2026-11-30/hour=08/part-0.parquet", "date=2026-11-30/hour=09/part-0.parquet"]);
        let reader = datafusion::parquet::file::reader::SerializedFileReader::new(File::open(&files[1]).expect("open")).expect("parquet");
        use datafusion::parquet::file::reader::FileReader;
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }
}
