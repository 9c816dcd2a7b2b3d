//! `surgeguard run` against a real Kafka broker: decisions for every request, malformed input to
//! the DLQ with its headers, offsets committed only after delivery, and at-least-once across a
//! kill -9. These need a broker: `scripts/test` starts one (Apache Kafka 4.x, from Maven Central)
//! and runs them; otherwise set SURGEGUARD_TEST_BROKERS=host:port and pass `--include-ignored`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use surgeguard::events::InputEvent;
use surgeguard::scenario::{Surge, monday_surge};

fn brokers() -> String {
    std::env::var("SURGEGUARD_TEST_BROKERS").expect("set SURGEGUARD_TEST_BROKERS or run scripts/test, which starts a broker")
}

/// A pipeline of its own per test: topics and group prefixed with a unique name.
struct Pipeline {
    prefix: String,
    config: std::path::PathBuf,
}

impl Pipeline {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let prefix = format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000);
        let topics: Vec<String> = ["requests", "outcomes", "telemetry", "admin", "decisions", "limits", "breakers", "predictions", "alerts", "dlq"]
            .iter()
            .map(|t| format!("{t} = \"{prefix}.{t}\""))
            .collect();
        let text = format!(
            "[topics]\n{}\n\n[kafka]\ngroup_id = \"{prefix}\"\nreplication_factor = 1\n\n[kafka.partitions]\nrequests = 3\ndecisions = 3\n",
            topics.join("\n")
        );
        let config = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&config, text).expect("write config");
        Pipeline { prefix, config }
    }

    fn topic(&self, t: &str) -> String {
        format!("{}.{t}", self.prefix)
    }

    fn start(&self) -> Service {
        let child = Command::new(support::bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--brokers", &brokers()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start surgeguard run");
        Service(Some(child))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        std::fs::remove_file(&self.config).ok();
    }
}

/// A running `surgeguard run`; killed if the test ends without stopping it.
struct Service(Option<Child>);

impl Service {
    fn signal(&self, sig: &str) {
        if let Some(c) = &self.0 {
            Command::new("kill").args([sig, &c.id().to_string()]).status().expect("kill");
        }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let mut child = self.0.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "surgeguard run did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(mut self) {
        self.signal("-KILL");
        if let Some(mut c) = self.0.take() {
            c.wait().ok();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

fn requests(n: usize) -> Vec<(String, Vec<u8>)> {
    monday_surge(&Surge { backend: false, ..Surge::default() })
        .into_iter()
        .filter_map(|e| match e {
            InputEvent::Request(r) => Some(r),
            _ => None,
        })
        .take(n)
        .map(|r| (r.user_id.to_string(), serde_json::to_vec(&r).expect("encodable")))
        .collect()
}

async fn produce(topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers()).set("linger.ms", "5").create().expect("producer");
    let mut pending = Vec::new();
    for (k, v) in records {
        pending.push(producer.send_result(FutureRecord::to(topic).key(k.as_bytes()).payload(v.as_slice())).map_err(|(e, _)| e).expect("enqueue"));
    }
    for p in pending {
        p.await.expect("report").map_err(|(e, _)| e).expect("delivered");
    }
}

/// Reads `topic` from the start until `done` (told of each message in turn) says so or `timeout`
/// passes; returns what it read.
fn read_until(topic: &str, timeout: Duration, mut done: impl FnMut(&rdkafka::message::OwnedMessage) -> bool) -> Vec<rdkafka::message::OwnedMessage> {
    let group = format!("reader-{topic}-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let m = m.detach();
            let finished = done(&m);
            got.push(m);
            if finished {
                break;
            }
        }
    }
    got
}

fn decided_ids(msgs: &[rdkafka::message::OwnedMessage]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for m in msgs {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).expect("decision JSON");
        *ids.entry(v["request_id"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
    }
    ids
}

fn committed_equals_end(group: &str, topic: &str, partitions: i32) -> bool {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    (0..partitions).all(|p| {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        let c = committed.find_partition(topic, p).map(|e| e.offset());
        c == Some(Offset::Offset(high)) || (high == 0 && matches!(c, Some(Offset::Invalid) | None))
    })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kafka broker: scripts/test starts one"]
async fn decides_every_request_dead_letters_malformed_input_and_commits_after_delivery() {
    let p = Pipeline::new("run");
    let service = p.start();
    let good = requests(2000);
    let ids: BTreeSet<String> = good.iter().map(|(_, v)| serde_json::from_slice::<serde_json::Value>(v).unwrap()["id"].as_str().unwrap().to_string()).collect();
    let mut bad: Vec<(String, Vec<u8>)> = (0..50).map(|i| (format!("bad-{i}"), format!("{{not json {i}").into_bytes())).collect();
    bad.extend((0..50).map(|i| (format!("neg-{i}"), format!(r#"{{"id":"n{i}","ts":"2026-11-30T09:00:00Z","user_id":"u","tier":"pro","request_type":"standard","cost":-1}}"#).into_bytes())));
    // Topics are created by the service; wait for them by producing with retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut mixed = good.clone();
    for (i, b) in bad.iter().enumerate() {
        mixed.insert((i * 17) % mixed.len(), b.clone());
    }
    produce(&p.topic("requests"), &mixed).await;

    let mut n = 0;
    let decisions = read_until(&p.topic("decisions"), Duration::from_secs(90), |_| {
        n += 1;
        n >= ids.len()
    });
    let decided = decided_ids(&decisions);
    let missing: Vec<_> = ids.iter().filter(|id| !decided.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty(), "{} of {} requests have no decision, e.g. {missing:?}", ids.len() - decided.len().min(ids.len()), ids.len());
    assert!(decided.values().all(|&n| n == 1), "a request was decided twice without a crash");
    let by_user: BTreeSet<_> = decisions.iter().map(|m| m.key().map(|k| k.to_vec())).collect();
    assert!(by_user.iter().all(|k| k.is_some()), "decisions are keyed by user_id");

    let mut n = 0;
    let dlq = read_until(&p.topic("dlq"), Duration::from_secs(30), |_| {
        n += 1;
        n >= bad.len()
    });
    assert_eq!(dlq.len(), bad.len(), "every malformed message is dead-lettered");
    for m in &dlq {
        let headers = m.headers().expect("DLQ headers");
        let names: BTreeSet<&str> = headers.iter().map(|h| h.key).collect();
        for h in [surgeguard::dlq::EXCEPTION, surgeguard::dlq::MESSAGE, surgeguard::dlq::TOPIC, surgeguard::dlq::PARTITION, surgeguard::dlq::OFFSET] {
            assert!(names.contains(h), "missing header {h}: {names:?}");
        }
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
        let original = bad.iter().find(|(k, _)| *k == key).expect("raw key kept");
        assert_eq!(m.payload(), Some(original.1.as_slice()), "raw value kept");
    }

    let status = service.stop();
    assert!(status.success(), "surgeguard run exited with {status} on SIGTERM");
    assert!(committed_equals_end(&p.prefix, &p.topic("requests"), 3), "offsets committed up to the end after a clean stop");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kafka broker: scripts/test starts one"]
async fn every_request_is_decided_after_a_kill_9_mid_stream() {
    let p = Pipeline::new("crash");
    let events = requests(100_000);
    let ids: BTreeSet<String> = events.iter().map(|(_, v)| serde_json::from_slice::<serde_json::Value>(v).unwrap()["id"].as_str().unwrap().to_string()).collect();
    let first = p.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce(&p.topic("requests"), &events).await;
    // Kill it once it is part-way through.
    let mut n = 0;
    let partial = read_until(&p.topic("decisions"), Duration::from_secs(60), |_| {
        n += 1;
        n >= 2000
    });
    assert!(partial.len() >= 2000, "no progress before the kill: {}", partial.len());
    first.kill9();
    // The kill must land mid-stream, or this test proves nothing.
    let mut n = 0;
    let at_kill = read_until(&p.topic("decisions"), Duration::from_secs(10), |_| {
        n += 1;
        n >= ids.len()
    });
    assert!(at_kill.len() < ids.len(), "the service had decided everything before the kill");
    let second = p.start();
    let mut seen = BTreeSet::new();
    let decisions = read_until(&p.topic("decisions"), Duration::from_secs(120), |m| {
        seen.extend(decided_ids(std::slice::from_ref(m)).into_keys());
        seen.len() >= ids.len()
    });
    let decided = decided_ids(&decisions);
    let missing = ids.iter().filter(|id| !decided.contains_key(*id)).count();
    assert_eq!(missing, 0, "requests without a decision after the restart");
    assert!(second.stop().success());
    assert!(committed_equals_end(&p.prefix, &p.topic("requests"), 3));
}
