//! `surgeguard archive` on the mock cluster: the requests topic to Parquet, killed with -9 in the
//! middle and started again, then run once more under a new group that reads everything again:
//! every request is in the archive exactly once, undecodable messages are skipped.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use support::Scratch;
use surgeguard::config::Config;
use surgeguard::history::aggregate::RequestReader;
use surgeguard::wire::events::RequestEvent;
use surgeguard::wire::time::Millis;

const T0: i64 = 1_767_571_200_000; // 2026-01-05T00:00:00Z
const TOPIC: &str = "surgeguard.requests";

fn requests(from: usize, to: usize) -> Vec<RequestEvent> {
    // 10 000 requests over about eleven hours of event time: about 150 an hour per partition,
    // so most flushes span two hours and write two files, and the crashes below land between
    // two renames even when a loaded machine makes the flushes small (at three hours, CI once
    // saw no crash land there).
    (from..to)
        .map(|i| RequestEvent {
            id: format!("r{i}").into(),
            ts: Millis(T0 + i as i64 * 4_000),
            user_id: format!("u{}", i % 97).into(),
            tier: "pro".into(),
            request_type: "standard".into(),
            cost: 1,
        })
        .collect()
}

async fn produce(brokers: &str, batch: &[RequestEvent], garbage: usize) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().expect("producer");
    let mut pending = Vec::new();
    for r in batch {
        let value = serde_json::to_vec(r).expect("encodable");
        pending.push(producer.send_result(FutureRecord::to(TOPIC).key(r.user_id.as_str()).payload(&value)).map_err(|(e, _)| e).expect("enqueued"));
    }
    for i in 0..garbage {
        let key = format!("g{i}");
        pending.push(producer.send_result(FutureRecord::to(TOPIC).key(&key).payload("{not json")).map_err(|(e, _)| e).expect("enqueued"));
    }
    for p in pending {
        p.await.expect("delivery report").map_err(|(e, _)| e).expect("produced");
    }
}

fn start(brokers: &str, dir: &std::path::Path, group: &str) -> Child {
    start_with(brokers, dir, group, None)
}

/// With `exit_after_files`, the archive exits abruptly after renaming that many files (fault
/// injection): in the middle of a flush, or between its last rename and its commit.
fn start_with(brokers: &str, dir: &std::path::Path, group: &str, exit_after_files: Option<u32>) -> Child {
    // A short session, so the restart does not wait 45 s for the killed member to be dropped.
    let config = dir.with_file_name("pipeline.toml");
    std::fs::write(&config, "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n").expect("config");
    Command::new(support::bin())
        .args(["archive", "--brokers", brokers, "--group", group, "--flush-every", "100ms", "--max-rows", "400", "--incomplete-grace", "0", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .envs(exit_after_files.map(|n| ("SURGEGUARD_FAULT_EXIT_AFTER_FILES", n.to_string())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start surgeguard archive")
}

/// Waits until `group` has committed every partition's end offset.
fn wait_committed(brokers: &str, group: &str) {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in 0..6 {
            tpl.add_partition(TOPIC, p);
            let (_, high) = c.fetch_watermarks(TOPIC, p, Duration::from_secs(5)).expect("watermarks");
            ends.insert(p, high);
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(5)).expect("committed");
        let done = committed.elements().iter().all(|e| matches!(e.offset(), Offset::Offset(o) if Some(&o) == ends.get(&e.partition())));
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "group {group} did not commit every partition's end in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop(child: Child) -> String {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "archive exited with {}: {stderr}", out.status);
    stderr
}

async fn archived_ids(dir: &std::path::Path) -> BTreeMap<String, usize> {
    let mut reader = RequestReader::open(&dir.to_string_lossy(), "ts").await.expect("archive readable");
    let mut ids = BTreeMap::new();
    let mut batch = Vec::new();
    while reader.next_batch(&mut batch).await.expect("batch") {
        for r in batch.drain(..) {
            *ids.entry(r.id.to_string()).or_insert(0) += 1;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_read_again_every_request_is_archived_once() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    for spec in surgeguard::kafka::topics::specs(&Config::default()) {
        cluster.create_topic(&spec.name, spec.partitions, 1).expect("create topic");
    }
    let dir = Scratch::new("archive");
    let out = dir.path("history");

    produce(&brokers, &requests(0, 5_000), 25).await;
    let mut first = start(&brokers, &out, "archive");
    // Kill it as soon as it has started writing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&out).is_ok_and(|mut d| d.next().is_some()) {
        assert!(first.try_wait().expect("wait").is_none(), "archive exited early");
        assert!(Instant::now() < deadline, "no archive files");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    Command::new("kill").args(["-KILL", &first.id().to_string()]).status().expect("kill -9");
    let _ = first.wait_with_output();

    produce(&brokers, &requests(5_000, 10_000), 25).await;
    // Crashes at chosen points: after 3, 4, 5… files (with flushes of one or two files, some
    // land between a flush's two renames, some after its last rename and before its commit).
    // Each restart cleans up after the one before.
    let mut removed = 0;
    for k in [3, 4, 5, 6] {
        let crashing = start_with(&brokers, &out, "archive", Some(k));
        let done = crashing.wait_with_output().expect("wait");
        assert_eq!(done.status.code(), Some(86), "{}", String::from_utf8_lossy(&done.stderr));
        removed += String::from_utf8_lossy(&done.stderr).matches("removed a file of an incomplete flush").count();
    }
    let second = start(&brokers, &out, "archive");
    wait_committed(&brokers, "archive");
    let log = stop(second);
    removed += log.matches("removed a file of an incomplete flush").count();
    assert!(removed > 0, "no crash fell between two renames of a flush");
    let ids = archived_ids(&out).await;
    assert_eq!(ids.len(), 10_000, "archived {} distinct requests", ids.len());
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "archived more than once: {twice:?}");

    // A new group reads the whole topic again: every record is found in the archive's file names
    // and skipped, as after a crash between writing files and committing.
    let third = start(&brokers, &out, "archive-again");
    wait_committed(&brokers, "archive-again");
    let log = stop(third);
    // (The first batch's undecodable messages lie below the archived offsets, so they count as
    // read again; the second batch's lie after the last archived request of their partitions.)
    assert!(log.contains("archived 0 requests") && log.contains("10025 read again and skipped") && log.contains("skipped, 25 undecodable"), "{log}");
    let again = archived_ids(&out).await;
    assert_eq!(again, ids);
    // Partitioned by date and hour.
    assert!(out.join("date=2026-01-05/hour=00").is_dir() && out.join("date=2026-01-05/hour=02").is_dir());
}
