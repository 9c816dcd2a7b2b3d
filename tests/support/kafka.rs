//! The real-broker tests' pipelines: a `surgeguard run` per test with topics and group of its
//! own, and the clients that feed and read them.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// The wall clock, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

pub fn brokers() -> String {
    std::env::var("SURGEGUARD_TEST_BROKERS").expect("set SURGEGUARD_TEST_BROKERS or run scripts/test, which starts a broker")
}

/// A pipeline of its own per test: topics and group prefixed with a unique name.
pub struct Pipeline {
    pub prefix: String,
    pub config: std::path::PathBuf,
    /// The brokers its instances use (`brokers()` unless a test runs its own broker).
    pub brokers: String,
}

impl Pipeline {
    pub fn new(name: &str) -> Self {
        Self::with(name, "")
    }

    /// A pipeline with extra `[kafka]` keys.
    pub fn with(name: &str, kafka: &str) -> Self {
        Self::with_tables(name, kafka, "")
    }

    /// A pipeline with extra `[kafka]` keys and extra tables (TOML from a table header on).
    pub fn with_tables(name: &str, kafka: &str, tables: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let prefix = format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000);
        let topics: Vec<String> =
            ["requests", "outcomes", "telemetry", "admin", "decisions", "limits", "breakers", "predictions", "alerts", "dlq", "changelog", "usage"]
                .iter()
                .map(|t| format!("{t} = \"{prefix}.{t}\""))
                .collect();
        // Event time only unless a test asks for the wall clock: the surge's events carry fixed
        // times, which the wall clock must not overtake during the tests' pauses.
        let wall_clock = if kafka.contains("wall_clock_after_idle_ms") { "" } else { "wall_clock_after_idle_ms = 0\n" };
        let text = format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n\n[topics]\n{}\n\n[kafka]\ngroup_id = \"{prefix}\"\nreplication_factor = 1\n{wall_clock}{kafka}\n\n[kafka.partitions]\nrequests = 3\ndecisions = 3\n\n{tables}\n",
            topics.join("\n")
        );
        let config = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(&config, text).expect("write config");
        Pipeline { prefix, config, brokers: brokers() }
    }

    pub fn topic(&self, t: &str) -> String {
        format!("{}.{t}", self.prefix)
    }

    pub fn start(&self) -> Service {
        self.start_with(Stdio::inherit())
    }

    /// Starts an instance whose log goes to `log` instead of the test's stderr.
    pub fn start_logging_to(&self, log: &std::path::Path) -> Service {
        self.start_with(Stdio::from(std::fs::File::create(log).expect("log file")))
    }

    pub fn start_with(&self, stderr: Stdio) -> Service {
        let child = Command::new(super::bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--brokers", &self.brokers, "--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
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
pub struct Service(pub Option<Child>);

impl Service {
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.0 {
            Command::new("kill").args([sig, &c.id().to_string()]).status().expect("kill");
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
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

    pub fn kill9(mut self) {
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

pub async fn produce(topic: &str, records: &[(String, Vec<u8>)]) {
    produce_at(&brokers(), topic, records).await
}

/// `produce`, to the broker at `brokers`.
pub async fn produce_at(brokers: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().expect("producer");
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
pub fn read_until(topic: &str, timeout: Duration, done: impl FnMut(&rdkafka::message::OwnedMessage) -> bool) -> Vec<rdkafka::message::OwnedMessage> {
    read_until_at(&brokers(), topic, timeout, done)
}

/// `read_until`, from the broker at `brokers`.
pub fn read_until_at(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&rdkafka::message::OwnedMessage) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    let group = format!("reader-{topic}-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
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

pub fn decided_ids(msgs: &[rdkafka::message::OwnedMessage]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for m in msgs {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).expect("decision JSON");
        *ids.entry(v["request_id"].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
    }
    ids
}

pub fn committed_equals_end(group: &str, topic: &str, partitions: i32) -> bool {
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

/// A broker of the test's own (`scripts/kafka start`), for tests that stop it and start it again;
/// stopped and removed when dropped.
pub struct OwnBroker {
    pub dir: String,
    pub bootstrap: String,
}

impl OwnBroker {
    fn script() -> Command {
        Command::new(super::root().join("scripts/kafka"))
    }

    pub fn start() -> Self {
        let out = Self::script().arg("start").stderr(Stdio::inherit()).output().expect("scripts/kafka start");
        assert!(out.status.success(), "scripts/kafka start failed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let (dir, bootstrap) = (lines.next().expect("state dir").to_string(), lines.last().expect("bootstrap").to_string());
        OwnBroker { dir, bootstrap }
    }

    /// Stops the broker, keeping its data (an outage).
    pub fn pause(&self) {
        let status = Self::script().args(["stop", &self.dir]).env("KEEP", "1").status().expect("scripts/kafka stop");
        assert!(status.success(), "stopping the broker failed");
    }

    /// Starts it again on its data and port.
    pub fn resume(&self) {
        let status = Self::script().args(["resume", &self.dir]).status().expect("scripts/kafka resume");
        assert!(status.success(), "resuming the broker failed");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        Self::script().args(["stop", &self.dir]).status().ok();
    }
}
