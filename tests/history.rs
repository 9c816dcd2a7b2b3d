//! History files and demand aggregation: `gen history` writes Parquet that DataFusion's
//! aggregation reads back exactly; series input is binned and zero-filled as computed by hand;
//! bad input gets a clear error.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use support::Scratch;
use surgeguard::apps::generate::{HistoryOptions, generate};
use surgeguard::history::aggregate::{DemandError, DemandSource, aggregate};
use surgeguard::wire::time::Millis;

/// Every `ts` in the Parquet files under `dir`, read with the parquet crate's own reader (not
/// DataFusion).
fn timestamps(dir: &Path) -> Vec<i64> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).expect("open")).expect("parquet").build().expect("reader");
                for batch in reader {
                    let batch = batch.expect("batch");
                    let ts = batch.column(0).as_any().downcast_ref::<TimestampMillisecondArray>().expect("ts column");
                    out.extend((0..ts.len()).map(|i| ts.value(i)));
                }
            }
        }
    }
    out
}

fn events(path: &str) -> DemandSource {
    DemandSource::Events { path: path.to_string(), ts_column: "ts".into(), group_column: None }
}

fn series(path: &str) -> DemandSource {
    DemandSource::Series { path: path.to_string(), ts_column: "ts".into(), value_column: "value".into() }
}

#[tokio::test]
async fn generated_history_aggregates_to_the_counts_of_its_rows() {
    let dir = Scratch::new("gen");
    let opts = HistoryOptions { days: 2, peak_rpm: 40.0, ..HistoryOptions::default() };
    let mut days_done = Vec::new();
    let made = generate(&opts, &dir.0, |d| days_done.push(d)).expect("generate");
    assert_eq!(days_done, [1, 2]);
    assert_eq!(made.files, 48, "one file per hour");
    assert!(made.rows > 10_000, "{} rows", made.rows);

    // Hourly counts computed from the rows by hand.
    let ts = timestamps(&dir.0);
    assert_eq!(ts.len() as u64, made.rows);
    let mut by_hour: BTreeMap<i64, f64> = BTreeMap::new();
    for t in &ts {
        *by_hour.entry(t - t.rem_euclid(3_600_000)).or_default() += 1.0;
    }
    let got = aggregate(&events(&dir.0.to_string_lossy()), 3_600_000).await.expect("aggregate");
    let s = &got[""];
    assert_eq!(s.start, Millis(opts.start.0));
    assert_eq!(s.values.len(), 48);
    let want: Vec<f64> = by_hour.values().copied().collect();
    assert_eq!(s.values, want);
    // The Monday 14:00 peak is far above the 03:00 floor (the daily shape made it through).
    assert!(s.values[14] > 3.0 * s.values[3], "14:00 {} vs 03:00 {}", s.values[14], s.values[3]);

    // Per request type, from a glob of one day's files: the groups add up to that day's rows.
    // (DataFusion's rule: `key=value` directories are partitions, which a glob looks through.)
    let glob = format!("{}/date=2026-01-05/*.parquet", dir.0.display());
    let by_type = aggregate(&DemandSource::Events { path: glob, ts_column: "ts".into(), group_column: Some("request_type".into()) }, 86_400_000)
        .await
        .expect("aggregate by type");
    assert_eq!(by_type.keys().map(String::as_str).collect::<Vec<_>>(), ["batch", "critical_business", "standard"]);
    let total: f64 = by_type.values().map(|s| s.values.iter().sum::<f64>()).sum();
    assert_eq!(total, s.values[..24].iter().sum::<f64>());

    // The external factors are listed beside the history.
    let factors = std::fs::read_to_string(dir.path("events.csv")).expect("events.csv");
    assert!(factors.starts_with("start,end,label\n"));
    assert_eq!(factors.lines().count() as u32, 1 + made.holidays + made.surges);
}

#[tokio::test]
async fn a_series_is_binned_summed_and_zero_filled() {
    let dir = Scratch::new("series");
    // 5-minute buckets from 00:00: 2 | 0 | 3+1 | 0 | 0 | 4 (rows out of order, RFC 3339 times).
    let csv = dir.write("s.csv", "ts,value\n2026-01-05T00:10:00Z,3\n2026-01-05T00:00:30Z,2\n2026-01-05T00:25:00Z,4\n2026-01-05T00:14:59.999Z,1\n");
    let got = aggregate(&series(&csv), 300_000).await.expect("aggregate");
    let s = &got[""];
    assert_eq!(s.start, Millis(1_767_571_200_000));
    assert_eq!(s.values, [2.0, 0.0, 4.0, 0.0, 0.0, 4.0]);

    // Epoch milliseconds work too, and events count rows.
    let csv = dir.write("e.csv", "ts,user\n1767571200000,a\n1767571260000,b\n1767571500000,c\n");
    let got = aggregate(&events(&csv), 120_000).await.expect("aggregate");
    assert_eq!(got[""].values, [2.0, 0.0, 1.0]);
}

#[tokio::test]
async fn arrow_ipc_files_are_read_too() {
    let dir = Scratch::new("ipc");
    let schema = Arc::new(Schema::new(vec![Field::new("when", DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None), false)]));
    let ts = TimestampMillisecondArray::from(vec![0, 1_000, 61_000, 185_000]);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ts)]).expect("batch");
    let path = dir.path("h.arrow");
    let mut w = datafusion::arrow::ipc::writer::FileWriter::try_new(File::create(&path).expect("create"), &schema).expect("ipc writer");
    w.write(&batch).expect("write");
    w.finish().expect("finish");
    let source = DemandSource::Events { path: path.to_string_lossy().to_string(), ts_column: "when".into(), group_column: None };
    let got = aggregate(&source, 60_000).await.expect("aggregate");
    assert_eq!(got[""].values, [2.0, 1.0, 0.0, 1.0]);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let dir = Scratch::new("bad");
    let csv = dir.write("s.csv", "time,value\n2026-01-05T00:00:00Z,1\n");
    match aggregate(&series(&csv), 60_000).await {
        Err(DemandError::MissingColumn { column, available, .. }) => {
            assert_eq!(column, "ts");
            assert!(available.contains("time"), "{available}");
        }
        other => panic!("expected a missing-column error, got {other:?}"),
    }
    let csv = dir.write("b.csv", "ts,value\ntrue,1\n");
    assert!(matches!(aggregate(&series(&csv), 60_000).await, Err(DemandError::NotATime { .. })));

    let empty = dir.path("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let err = aggregate(&events(&empty.to_string_lossy()), 60_000).await.expect_err("an empty directory is no history");
    assert!(matches!(err, DemandError::Read { .. } | DemandError::NoData { .. }), "{err}");

    // A footer claiming more metadata than the file holds (the parquet crate panics on this one).
    let corrupt = dir.write("broken.parquet", "PAR1 this is not a parquet file PAR1");
    let err = aggregate(&events(&corrupt), 60_000).await.expect_err("a corrupted file");
    assert!(err.to_string().contains("broken.parquet") && err.to_string().contains("corrupted"), "{err}");
    // Garbage where a real file's row groups should be, footer intact: DataFusion's error.
    let good = dir.path("good");
    generate(&HistoryOptions { days: 1, peak_rpm: 5.0, ..HistoryOptions::default() }, &good, |_| {}).expect("generate");
    let victim = std::fs::read_dir(good.join("date=2026-01-05/hour=12")).expect("hour dir").flatten().next().expect("a file").path();
    let mut bytes = std::fs::read(&victim).expect("read");
    for b in bytes.iter_mut().skip(4).take(200) {
        *b = 0xAB;
    }
    std::fs::write(&victim, bytes).expect("write");
    assert!(aggregate(&events(&good.to_string_lossy()), 60_000).await.is_err(), "damaged row groups read without error");

    let header_only = dir.write("h.csv", "ts,value\n");
    assert!(aggregate(&series(&header_only), 60_000).await.is_err());
    let missing = dir.path("nope.parquet");
    assert!(aggregate(&events(&missing.to_string_lossy()), 60_000).await.is_err());
}
