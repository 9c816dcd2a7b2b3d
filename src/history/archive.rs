//! The request archive's files and how a restart finds where it left off (`apps/archive.rs` is
//! the Kafka loop around them).
//!
//! Each requests partition is buffered on its own; a flush writes the buffered records of one
//! partition, `first..=last` offsets, as one file per event-time hour they fall in:
//!
//! `DIR/date=YYYY-MM-DD/hour=HH/TOPIC+PARTITION+FIRST+LAST+K+N.parquet`
//!
//! (offsets zero-padded to 20 digits; the `K`-th of the flush's `N` files). A flush writes at
//! most `MAX_HOUR_FILES` hour files, for its hours with the most records; the records of its
//! other hours (stragglers, a producer with a bad clock) go into one more file,
//! `DIR/date=scattered/hour=scattered/…`, so that scattered timestamps cannot make a file and a
//! directory per record. Files are written atomically (temporary file, sync, rename) and the consumer's offset is committed only after
//! all `N` are in place. The file names are the archive's own record of what it holds, as in
//! Kafka Connect's HDFS and S3 sinks: on start-up, and for each partition it is assigned, the
//! archive scans them (one walk of the directory per rebalance), removes the files of any flush
//! that is not complete (a crash between two renames) once they are older than a grace period
//! (a live writer may still be renaming), and skips every record at or below the last offset of
//! a complete flush (a crash after the renames and before the commit). So a record is in exactly
//! one file, whatever the moment of a crash. One group writes to a directory at a time. A
//! temporary file is removed when its write fails, and the scan removes those a crash left
//! behind (once older than the grace period).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::history::parquet::{HistoryError, partition_dir, write_file_atomic};
use crate::wire::events::RequestEvent;

/// The most hour files one flush writes; its other hours' records share one file.
pub const MAX_HOUR_FILES: usize = 8;

/// The directory of the records of a flush's hours beyond `MAX_HOUR_FILES`: as deep as the
/// hours' (Hive-style readers see `date` and `hour` = `scattered`; the `ts` column has the time).
pub const SCATTERED_DIR: &str = "date=scattered/hour=scattered";

/// One archive file's place in its flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub k: u32,
    pub n: u32,
}

impl FileName {
    pub fn render(&self) -> String {
        format!("{}+{}+{:020}+{:020}+{}+{}.parquet", self.topic, self.partition, self.first, self.last, self.k, self.n)
    }

    /// Parses a file name; `None` for anything else (other files may share the directory).
    pub fn parse(name: &str) -> Option<FileName> {
        let stem = name.strip_suffix(".parquet")?;
        // The topic may not contain `+` (Kafka topic names are [a-zA-Z0-9._-]).
        let mut parts = stem.rsplitn(6, '+');
        let n = parts.next()?.parse().ok()?;
        let k = parts.next()?.parse().ok()?;
        let last = parts.next()?.parse().ok()?;
        let first = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next()?.to_string();
        (k >= 1 && k <= n && first <= last && !topic.is_empty()).then_some(FileName { topic, partition, first, last, k, n })
    }
}

/// One flush found on disk: its files, how many it should have, and the newest file's age.
#[derive(Debug, Clone, Default)]
struct Flush {
    n: u32,
    files: Vec<PathBuf>,
    newest: Option<SystemTime>,
}

/// The archive's files of one topic, by partition and flush (`first`, `last`), from one walk of
/// the directory.
#[derive(Debug, Default)]
pub struct Scan {
    partitions: HashMap<i32, BTreeMap<(i64, i64), Flush>>,
    /// Temporary files of a write that never finished (`.NAME.tmp`), and their age.
    temporary: Vec<(PathBuf, Option<SystemTime>)>,
}

/// What the scan says of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last offset of the partition's complete flushes (`None`: nothing archived).
    pub archived_up_to: Option<i64>,
    /// Files of incomplete flushes, removed.
    pub removed: Vec<PathBuf>,
    /// An incomplete flush younger than the grace period was left alone: its writer may still
    /// be renaming its files. Scan again later.
    pub wait: bool,
}

impl Scan {
    /// Walks `dir` for `topic`'s files.
    pub fn of(dir: &Path, topic: &str) -> Result<Scan, HistoryError> {
        let mut scan = Scan::default();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(HistoryError::Io { path: d, source }),
            };
            for e in entries.flatten() {
                let p = e.path();
                let Ok(ty) = e.file_type() else { continue };
                if ty.is_dir() {
                    stack.push(p);
                    continue;
                }
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp"))
                    && FileName::parse(inner).is_some_and(|f| f.topic == topic)
                {
                    scan.temporary.push((p.clone(), e.metadata().and_then(|m| m.modified()).ok()));
                    continue;
                }
                let Some(f) = FileName::parse(name) else { continue };
                if f.topic != topic {
                    continue;
                }
                let modified = e.metadata().and_then(|m| m.modified()).ok();
                let flush = scan.partitions.entry(f.partition).or_default().entry((f.first, f.last)).or_default();
                flush.n = f.n;
                flush.files.push(p);
                flush.newest = flush.newest.max(modified);
            }
        }
        Ok(scan)
    }

    /// The last archived offset of `partition`; removes the files of its incomplete flushes
    /// that are older than `grace` (a crash between renames: their offsets were never
    /// committed, so their records come again).
    pub fn recover(&mut self, partition: i32, grace: Duration) -> Result<Recovered, HistoryError> {
        let mut r = Recovered::default();
        let now = SystemTime::now();
        let old = |t: &Option<SystemTime>| t.and_then(|t| now.duration_since(t).ok()).unwrap_or(Duration::MAX) >= grace;
        let (stale, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.temporary).into_iter().partition(|(p, t)| {
            let ours = p.file_name().and_then(|n| n.to_str()).and_then(|n| FileName::parse(&n[1..n.len() - 4])).is_some_and(|f| f.partition == partition);
            ours && old(t)
        });
        self.temporary = live;
        for (path, _) in stale {
            match std::fs::remove_file(&path) {
                Ok(()) => r.removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(HistoryError::Io { path, source }),
            }
        }
        let Some(flushes) = self.partitions.get_mut(&partition) else { return Ok(r) };
        let mut gone = Vec::new();
        for (&(first, last), f) in flushes.iter() {
            if f.files.len() as u32 >= f.n {
                r.archived_up_to = Some(r.archived_up_to.map_or(last, |a: i64| a.max(last)));
                continue;
            }
            let age = f.newest.and_then(|t| now.duration_since(t).ok()).unwrap_or(Duration::MAX);
            if age < grace {
                r.wait = true;
                continue;
            }
            for path in &f.files {
                match std::fs::remove_file(path) {
                    Ok(()) => r.removed.push(path.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(HistoryError::Io { path: path.clone(), source }),
                }
            }
            gone.push((first, last));
        }
        for k in gone {
            flushes.remove(&k);
        }
        Ok(r)
    }
}

/// Scans `dir` for `topic`'s files of `partition`, removes incomplete flushes (whatever their
/// age), and returns the last archived offset.
#[cfg(test)]
pub fn recover(dir: &Path, topic: &str, partition: i32) -> Result<Recovered, HistoryError> {
    Scan::of(dir, topic)?.recover(partition, Duration::ZERO)
}

/// One partition's buffered records, in offset order.
#[derive(Debug, Default)]
pub struct PartitionBuffer {
    records: Vec<(i64, RequestEvent)>,
}

impl PartitionBuffer {
    pub fn push(&mut self, offset: i64, e: RequestEvent) {
        self.records.push((offset, e));
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drops the records at `offset` and after (the consumer reads them again).
    pub fn truncate_from(&mut self, offset: i64) {
        self.records.retain(|(o, _)| *o < offset);
    }

    /// Writes the buffered records as one flush (a file per hour), emptying the buffer; returns
    /// the files and the flush's last offset. `renamed` is called after each file is in place.
    /// On an error the buffer is kept: files already renamed belong to an incomplete flush,
    /// which the next scan removes, and the offsets stay uncommitted.
    pub fn flush(&mut self, dir: &Path, topic: &str, partition: i32, renamed: &mut dyn FnMut(&Path)) -> Result<Option<(Vec<PathBuf>, i64)>, HistoryError> {
        let (Some(&(first, _)), Some(&(last, _))) = (self.records.first(), self.records.last()) else { return Ok(None) };
        let mut by_hour: BTreeMap<String, Vec<RequestEvent>> = BTreeMap::new();
        for (_, e) in &self.records {
            by_hour.entry(partition_dir(e.ts)?).or_default().push(e.clone());
        }
        // The hours with the most records keep files of their own (ties: the earlier hour).
        if by_hour.len() > MAX_HOUR_FILES {
            let mut sizes: Vec<(usize, String)> = by_hour.iter().map(|(h, v)| (v.len(), h.clone())).collect();
            sizes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let mut scattered = Vec::new();
            for (_, hour) in &sizes[MAX_HOUR_FILES..] {
                scattered.extend(by_hour.remove(hour).unwrap_or_default());
            }
            scattered.sort_by_key(|e| e.ts);
            by_hour.insert(SCATTERED_DIR.to_string(), scattered);
        }
        let n = by_hour.len() as u32;
        let mut files = Vec::with_capacity(by_hour.len());
        for (i, (hour, events)) in by_hour.into_iter().enumerate() {
            let name = FileName { topic: topic.to_string(), partition, first, last, k: i as u32 + 1, n };
            let path = dir.join(hour).join(name.render());
            write_file_atomic(&path, &events)?;
            renamed(&path);
            files.push(path);
        }
        self.records.clear();
        Ok(Some((files, last)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::time::Millis;

    fn ev(id: &str, ts: i64) -> RequestEvent {
        RequestEvent { id: id.into(), ts: Millis(ts), user_id: "u".into(), tier: "free".into(), request_type: "standard".into(), cost: 1 }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-archive-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        d
    }

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        let f = FileName { topic: "surgeguard.requests".into(), partition: 3, first: 10, last: 99, k: 2, n: 2 };
        assert_eq!(f.render(), "surgeguard.requests+3+00000000000000000010+00000000000000000099+2+2.parquet");
        assert_eq!(FileName::parse(&f.render()), Some(f));
        for other in ["events.csv", "x.parquet", "a+1+2+3+4.parquet", "t+1+5+4+1+1.parquet", "t+1+1+2+3+2.parquet", ".t+1+1+2+1+1.parquet.tmp"] {
            assert_eq!(FileName::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_flush_splits_by_hour_and_recovery_finds_its_end() {
        let dir = scratch("flush");
        let hour = 3_600_000;
        let mut b = PartitionBuffer::default();
        // Offsets 5..=8; the event times straddle two hours, out of order.
        b.push(5, ev("a", 10 * hour - 1));
        b.push(6, ev("b", 10 * hour));
        b.push(7, ev("c", 10 * hour - 2));
        b.push(8, ev("d", 10 * hour + 1));
        let (files, last) = b.flush(&dir, "req", 2, &mut |_| {}).expect("flush").expect("records");
        assert_eq!(last, 8);
        assert!(b.is_empty());
        let rel: Vec<String> = files.iter().map(|f| f.strip_prefix(&dir).expect("under dir").display().to_string()).collect();
        assert_eq!(
            rel,
            [
                "date=1970-01-01/hour=09/req+2+00000000000000000005+00000000000000000008+1+2.parquet",
                "date=1970-01-01/hour=10/req+2+00000000000000000005+00000000000000000008+2+2.parquet",
            ]
        );
        assert_eq!(recover(&dir, "req", 2).expect("scan"), Recovered { archived_up_to: Some(8), removed: vec![], wait: false });
        assert_eq!(recover(&dir, "req", 1).expect("scan").archived_up_to, None);
        assert_eq!(recover(&dir, "other", 2).expect("scan").archived_up_to, None);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn scattered_timestamps_make_a_bounded_number_of_files() {
        // The review's case: 2 000 requests with timestamps scattered over years made 2 036
        // files. Now: the busiest hours' files, and one for the rest.
        let dir = scratch("scattered");
        let hour = 3_600_000;
        let mut b = PartitionBuffer::default();
        for i in 0..2_000 {
            // Half in hour 10, a tenth in hour 11, the rest one per hour over years.
            let ts = if i % 2 == 0 {
                10 * hour + i
            } else if i % 10 == 1 {
                11 * hour
            } else {
                (1_000 + i * 37) * hour
            };
            b.push(i, ev(&format!("r{i}"), ts));
        }
        let (files, last) = b.flush(&dir, "req", 0, &mut |_| {}).expect("flush").expect("records");
        assert_eq!((files.len(), last), (MAX_HOUR_FILES + 1, 1_999));
        let rel = |f: &PathBuf| f.strip_prefix(&dir).expect("under dir").display().to_string();
        assert!(rel(&files[0]).starts_with("date=1970-01-01/hour=10/"), "the busiest hour first: {}", rel(&files[0]));
        assert!(rel(&files[1]).starts_with("date=1970-01-01/hour=11/"));
        assert!(rel(files.last().expect("files")).starts_with("date=scattered/hour=scattered/"));
        let rows: i64 = files
            .iter()
            .map(|f| {
                use datafusion::parquet::file::reader::FileReader;
                let reader = datafusion::parquet::file::reader::SerializedFileReader::new(std::fs::File::open(f).expect("open")).expect("parquet");
                reader.metadata().file_metadata().num_rows()
            })
            .sum();
        assert_eq!(rows, 2_000, "every record in exactly one file");
        assert_eq!(recover(&dir, "req", 0).expect("scan").archived_up_to, Some(1_999));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn temporary_files_never_stay() {
        let dir = scratch("temporary");
        let hour = 3_600_000;
        // A failed write (here the rename: a directory holds the file's name) removes its
        // temporary file.
        let mut b = PartitionBuffer::default();
        b.push(0, ev("a", hour));
        let target = dir.join("date=1970-01-01/hour=01/req+0+00000000000000000000+00000000000000000000+1+1.parquet");
        std::fs::create_dir_all(target.join("in-the-way")).expect("dir");
        assert!(b.flush(&dir, "req", 0, &mut |_| {}).is_err());
        assert_eq!(b.len(), 1, "kept for the next try");
        let tmp = target.with_file_name(".req+0+00000000000000000000+00000000000000000000+1+1.parquet.tmp");
        assert!(!tmp.exists());
        // One a crash left behind is removed by the scan once older than the grace period.
        std::fs::write(&tmp, b"half a file").expect("write");
        let young = Scan::of(&dir, "req").expect("scan").recover(0, Duration::from_secs(3600)).expect("recover");
        assert!(young.removed.is_empty() && tmp.exists());
        assert_eq!(Scan::of(&dir, "req").expect("scan").recover(1, Duration::ZERO).expect("recover").removed, Vec::<PathBuf>::new(), "another partition's");
        let r = recover(&dir, "req", 0).expect("scan");
        assert_eq!(r.removed, vec![tmp.clone()]);
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_incomplete_flush_is_removed_and_does_not_count() {
        let dir = scratch("incomplete");
        let hour = 3_600_000;
        let mut b = PartitionBuffer::default();
        b.push(0, ev("a", hour));
        b.flush(&dir, "req", 0, &mut |_| {}).expect("flush");
        b.push(1, ev("b", hour));
        b.push(2, ev("c", 2 * hour));
        let (files, _) = b.flush(&dir, "req", 0, &mut |_| {}).expect("flush").expect("records");
        // A crash after the first of the two renames: the second file is not there.
        std::fs::remove_file(&files[1]).expect("remove");
        // Within the grace period the writer may still be renaming: left alone.
        let young = Scan::of(&dir, "req").expect("scan").recover(0, Duration::from_secs(3600)).expect("recover");
        assert_eq!(young, Recovered { archived_up_to: Some(0), removed: vec![], wait: true });
        assert!(files[0].exists());
        let r = recover(&dir, "req", 0).expect("scan");
        assert_eq!(r.archived_up_to, Some(0));
        assert!(!r.wait);
        assert_eq!(r.removed, vec![files[0].clone()]);
        assert!(!files[0].exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
