//! Faults on a real Kafka broker (issue 19): poison records never stop `surgeguard run`, a lost
//! assignment and a broker outage are ridden out in the process (restarting the pipeline in
//! place when they must), and a million users and 100 000 dependencies stay within the tables'
//! caps. These need a broker: `scripts/test` starts one and runs them; otherwise set
//! SURGEGUARD_TEST_BROKERS=host:port and pass `--include-ignored`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::kafka::*;

/// Sends records of up to a megabyte (the client's default refuses 1 000 000 bytes and more).
async fn produce_large(topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers()).set("message.max.bytes", "1048576").create().expect("producer");
    for (k, v) in records {
        producer.send(FutureRecord::to(topic).key(k.as_bytes()).payload(v.as_slice()), Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("delivered");
    }
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn request(id: &str, user: &str) -> Vec<u8> {
    format!(r#"{{"id":"{id}","ts":"2026-11-30T09:00:00Z","user_id":"{user}","tier":"pro","request_type":"standard"}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kafka broker: scripts/test starts one"]
async fn poison_records_go_to_the_dlq_and_the_service_keeps_deciding() {
    // The producer's message.max.bytes is lowered so that an accepted request with a long user id
    // makes a decision too large to send: the decision goes to the DLQ in its place.
    let p = Pipeline::with_tables(
        "poison",
        "",
        "[kafka.properties]\n\"message.max.bytes\" = \"150000\"\n\n[limits]\nrecord_bytes = 100000\nuser_id_bytes = 90000\n",
    );
    let log = std::env::temp_dir().join(format!("{}.log", p.prefix));
    let service = p.start_logging_to(&log);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let good = |from: usize, n: usize| {
        (from..from + n).map(|i| (format!("user-{}", i % 7), request(&format!("ok-{i}"), &format!("user-{}", i % 7)))).collect::<Vec<_>>()
    };
    produce(&p.topic("requests"), &good(0, 100)).await;
    // The review's poison records: a valid request with a 600 000-byte user id, an undecodable
    // request whose cost is a 700 000-byte string, six outcomes with a 600 000-byte dependency;
    // and a request the limits accept whose decision (key and value carry the user id) outgrows
    // message.max.bytes.
    let big_user = "u".repeat(600_000);
    let cost = "9".repeat(700_000);
    let accepted_user = "a".repeat(85_000);
    let poison_requests = vec![
        ("poison-user".to_string(), request("p-user", &big_user)),
        (
            "poison-cost".to_string(),
            format!(r#"{{"id":"p-cost","ts":"2026-11-30T09:00:00Z","user_id":"x","tier":"pro","request_type":"standard","cost":"{cost}"}}"#).into_bytes(),
        ),
        ("poison-decision".to_string(), request("p-decision", &accepted_user)),
    ];
    let dependency = "d".repeat(600_000);
    let poison_outcomes: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("poison-outcome-{i}"),
                format!(r#"{{"ts":"2026-11-30T09:00:00Z","dependency":"{dependency}","ok":false,"error":"timeout","latency_ms":5}}"#).into_bytes(),
            )
        })
        .collect();
    produce_large(&p.topic("requests"), &poison_requests).await;
    produce_large(&p.topic("outcomes"), &poison_outcomes).await;
    produce(&p.topic("requests"), &good(100, 100)).await;

    // Every good request is decided, before and after the poison.
    let want: BTreeSet<String> = (0..200).map(|i| format!("ok-{i}")).collect();
    let mut seen = BTreeSet::new();
    let decisions = read_until(&p.topic("decisions"), Duration::from_secs(60), |m| {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).unwrap_or_default();
        if let Some(id) = v["request_id"].as_str().filter(|id| want.contains(*id)) {
            seen.insert(id.to_string());
        }
        seen.len() == want.len()
    });
    let decided = decided_ids(&decisions);
    let missing: Vec<_> = want.iter().filter(|id| !decided.contains_key(*id)).take(5).collect();
    assert!(missing.is_empty(), "good requests without a decision, e.g. {missing:?}");
    assert!(!decided.contains_key("p-user") && !decided.contains_key("p-cost"), "refused requests are not decided");

    let expected = poison_requests.len() + poison_outcomes.len();
    let mut n = 0;
    let dlq = read_until(&p.topic("dlq"), Duration::from_secs(30), |_| {
        n += 1;
        n >= expected
    });
    let by_key: BTreeMap<String, &OwnedMessage> = dlq.iter().map(|m| (String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(), m)).collect();
    for (key, value) in poison_requests.iter().chain(&poison_outcomes) {
        // The refused decision is dead-lettered with its own key (the user id, cut).
        let found = if key == "poison-decision" { by_key.get(&"a".repeat(1024)) } else { by_key.get(key) };
        let m = found.unwrap_or_else(|| panic!("{key} is not in the DLQ (it holds {} records)", by_key.len()));
        let exception = header(m, surgeguard::wire::dlq::EXCEPTION).unwrap_or_default();
        let message = header(m, surgeguard::wire::dlq::MESSAGE).unwrap_or_default();
        assert!(message.len() < 1024, "{key}: the reason is cut ({} bytes)", message.len());
        let payload = m.payload().unwrap_or_default();
        assert!(payload.len() < 150_000, "{key}: the dead letter fits message.max.bytes ({} bytes)", payload.len());
        if key == "poison-decision" {
            // The refused output (the decision) is kept, cut, in place of its request.
            assert_eq!(exception, "output_refused", "{key}: {message}");
            assert_eq!(header(m, surgeguard::wire::dlq::TOPIC).as_deref(), Some(p.topic("requests").as_str()), "{key}: names its input");
            assert_eq!(header(m, surgeguard::wire::dlq::KEY_TRUNCATED), Some("85000".to_string()), "{key}: its key (the user id) is cut");
            assert!(String::from_utf8_lossy(payload).contains(r#""p-decision""#), "{key}: the decision's head is kept");
        } else {
            assert_eq!(exception, "too_large", "{key}: {message}");
            assert!(message.contains("limits.record_bytes"), "{key}: the reason names the limit: {message}");
            assert!(value.starts_with(payload), "{key}: the value kept is the input's head");
            assert_eq!(header(m, surgeguard::wire::dlq::TRUNCATED), Some(value.len().to_string()), "{key}: says it was cut, and from what");
        }
    }

    assert!(service.0.as_ref().is_some(), "running");
    let status = service.stop();
    assert!(status.success(), "surgeguard run exited with {status} on SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains(&"u".repeat(1000)) && !text.contains(&"9".repeat(1000)), "the log does not carry the poison values");
    std::fs::remove_file(&log).ok();
}

/// Requests `from..from + n`, 500 users.
fn numbered(from: usize, n: usize) -> Vec<(String, Vec<u8>)> {
    (from..from + n).map(|i| (format!("user-{}", i % 500), request(&format!("r-{i}"), &format!("user-{}", i % 500)))).collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kafka broker: scripts/test starts one"]
async fn a_lost_assignment_under_exactly_once_decides_each_request_once() {
    // A short session: an instance stopped for 8 s loses its partitions (but not its open
    // transaction, which the coordinator times out after 10 s).
    let p = Pipeline::with_tables(
        "lost",
        "guarantee = \"exactly_once\"",
        "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
    );
    let (log_a, log_b) = (std::env::temp_dir().join(format!("{}.a.log", p.prefix)), std::env::temp_dir().join(format!("{}.b.log", p.prefix)));
    let a = p.start_logging_to(&log_a);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = 40_000;
    produce(&p.topic("requests"), &numbered(0, n)).await;
    // Mid-backlog, with a transaction open: stopped past the session timeout, while a second
    // instance joins and takes every partition from the last committed transaction.
    let mut first = 0;
    read_until(&p.topic("decisions"), Duration::from_secs(60), |_| {
        first += 1;
        first >= 2_000
    });
    a.signal("-STOP");
    let b = p.start_logging_to(&log_b);
    tokio::time::sleep(Duration::from_secs(8)).await;
    a.signal("-CONT");
    produce(&p.topic("requests"), &numbered(n, 5_000)).await;
    let want: BTreeSet<String> = (0..n + 5_000).map(|i| format!("r-{i}")).collect();
    let mut seen = BTreeSet::new();
    let decisions = read_until(&p.topic("decisions"), Duration::from_secs(180), |m| {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).unwrap_or_default();
        if let Some(id) = v["request_id"].as_str() {
            seen.insert(id.to_string());
        }
        seen.len() >= want.len()
    });
    // A read_committed reader sees each request decided once: the lost assignment's open
    // transaction was aborted, not committed without its offsets.
    let decided = decided_ids(&decisions);
    let missing = want.iter().filter(|id| !decided.contains_key(*id)).count();
    let twice: Vec<_> = decided.iter().filter(|(_, n)| **n > 1).take(5).collect();
    let log = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    for line in log(&log_a).lines().filter(|l| l.contains("lost") || l.contains("abort") || l.contains("transaction") || l.contains("ERROR")) {
        eprintln!("instance a: {line}");
    }
    assert_eq!(missing, 0, "requests without a decision");
    assert!(twice.is_empty(), "requests decided more than once under exactly_once, e.g. {twice:?}");
    // Instance A is still there: a transaction the coordinator timed out meanwhile fences its
    // producer, and the pipeline starts again in the process with a new one.
    let mut a = a;
    let child = a.0.as_mut().expect("running");
    assert!(child.try_wait().expect("wait").is_none(), "instance a exited after losing its assignment");
    let status = a.stop();
    assert!(status.success(), "instance a exited with {status} on SIGTERM");
    drop(b);
    for path in [log_a, log_b] {
        std::fs::remove_file(path).ok();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kafka broker: scripts/test starts one"]
async fn a_broker_outage_of_30_s_is_ridden_out_without_a_restart() {
    ride_out_an_outage("", "").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kafka broker: scripts/test starts one"]
async fn a_broker_outage_of_30_s_is_ridden_out_without_a_restart_under_exactly_once() {
    ride_out_an_outage("guarantee = \"exactly_once\"", "").await;
}

/// Past `message.timeout.ms` (shortened to 8 s) outputs fail: the pipeline starts again in the
/// process, and again while the broker stays away, until it is back. (Exactly-once, idle, has
/// nothing in flight to time out; its restart in place is the lost assignment's above.)
const SHORT_MESSAGE_TIMEOUT: &str = "[kafka.properties]\n\"message.timeout.ms\" = \"8000\"\n";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kafka broker: scripts/test starts one"]
async fn an_outage_past_the_message_timeout_restarts_the_pipeline_in_place() {
    ride_out_an_outage("restart_backoff_max_ms = 5000", SHORT_MESSAGE_TIMEOUT).await;
}

/// Requests decided, the broker stopped for 30 s and started again, more requests: all decided,
/// by the same process. `kafka`: extra `[kafka]` keys; `tables`: extra tables (librdkafka
/// properties), with a message timeout shorter than the outage when the pipeline must restart.
async fn ride_out_an_outage(kafka: &str, tables: &str) {
    // A broker of its own, to stop and start again.
    let broker = OwnBroker::start();
    let mut p = Pipeline::with_tables("outage", kafka, tables);
    p.brokers = broker.bootstrap.clone();
    let log = std::env::temp_dir().join(format!("{}.log", p.prefix));
    let mut service = p.start_logging_to(&log);
    tokio::time::sleep(Duration::from_secs(4)).await;
    produce_at(&p.brokers, &p.topic("requests"), &numbered(0, 2_000)).await;
    // Each request id read (read_committed), and how often.
    let decided = |want: usize| {
        let mut seen = BTreeSet::new();
        let msgs = read_until_at(&p.brokers, &p.topic("decisions"), Duration::from_secs(120), |m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).unwrap_or_default();
            if let Some(id) = v["request_id"].as_str() {
                seen.insert(id.to_string());
            }
            seen.len() >= want
        });
        decided_ids(&msgs)
    };
    assert_eq!(decided(2_000).len(), 2_000, "decided before the outage");
    // The broker goes away for 30 s (the service's clients retry: librdkafka's
    // message.timeout.ms is 300 s), then comes back on its data and port.
    broker.pause();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let child = service.0.as_mut().expect("running");
    assert!(child.try_wait().expect("wait").is_none(), "surgeguard run exited during the outage");
    broker.resume();
    produce_at(&p.brokers, &p.topic("requests"), &numbered(2_000, 2_000)).await;
    let seen = decided(4_000);
    let missing: Vec<_> = (0..4_000).map(|i| format!("r-{i}")).filter(|id| !seen.contains_key(id)).take(5).collect();
    assert!(missing.is_empty(), "requests without a decision after the outage, e.g. {missing:?}");
    if kafka.contains("exactly_once") {
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(twice.is_empty(), "requests decided more than once under exactly_once, e.g. {twice:?}");
    }
    let child = service.0.as_mut().expect("running");
    assert!(child.try_wait().expect("wait").is_none(), "surgeguard run exited after the outage");
    let status = service.stop();
    assert!(status.success(), "surgeguard run exited with {status} on SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let restarts = text.lines().filter(|l| l.contains("starting it again")).count();
    eprintln!("{restarts} restarts in the process");
    if tables.contains("message.timeout.ms") {
        assert!(restarts >= 1, "an outage past the message timeout restarts the pipeline in the process");
    }
    std::fs::remove_file(&log).ok();
}

/// Sends `records` (key, value) to `topic`, as fast as the producer's queue takes them.
fn produce_many(brokers: &str, topic: &str, records: impl Iterator<Item = (String, Vec<u8>)>) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "20").set("batch.size", "1000000").create().expect("producer");
    for (k, v) in records {
        let mut record = BaseRecord::to(topic).key(k.as_bytes()).payload(v.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => panic!("enqueue: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flushed");
}

/// `2026-11-30T09:00:00Z` plus `ms`.
fn stamp(ms: u64) -> String {
    let (s, ms) = (ms / 1000, ms % 1000);
    format!("2026-11-30T{:02}:{:02}:{:02}.{ms:03}Z", 9 + s / 3600, (s / 60) % 60, s % 60)
}

/// The value of the Prometheus sample `name` (with its labels as written) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// A process's resident set (now, and its peak) in MB, from /proc.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).unwrap_or(0.0);
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// A million distinct users and 100 000 distinct dependency names, live: the tables stay at
/// their caps (`limiter.max_keys_per_partition`, `learned_dependencies.max`), the resident set
/// stays bounded (printed), and the time per event stays flat as the tables fill.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kafka broker: scripts/test starts one"]
async fn a_million_users_and_100_000_dependencies_stay_within_the_caps() {
    const USERS: u64 = 1_000_000;
    const DEPENDENCIES: u64 = 100_000;
    const KEYS_PER_PARTITION: u64 = 50_000;
    let p = Pipeline::with_tables("scale", "", &format!("[limiter]\nmax_keys_per_partition = {KEYS_PER_PARTITION}\n"));
    let log = std::env::temp_dir().join(format!("{}.log", p.prefix));
    let mut service = p.start_logging_to(&log);
    let pid = service.0.as_ref().expect("running").id();
    // The API's address, from the log.
    let started = std::time::Instant::now();
    let api = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.find("HTTP API on http://") {
            let rest = &text[at + "HTTP API on http://".len()..];
            break rest[..rest.find(['"', '\n']).unwrap_or(rest.len())].to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no API address in the log");
        std::thread::sleep(Duration::from_millis(200));
    };
    let metrics = || ureq::get(&format!("http://{api}/metrics")).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok()).unwrap_or_default();
    let (requests_topic, outcomes_topic) = (p.topic("requests"), p.topic("outcomes"));
    // Outcomes first, each naming a new dependency, 10 ms apart (one in three failed); then the
    // requests, each from a new user, 1 ms apart over the same minutes.
    let outcomes = (0..DEPENDENCIES).map(|i| {
        let ok = i % 3 != 0;
        (format!("dep-{i}"), format!(r#"{{"ts":"{}","dependency":"dep-{i}","ok":{ok},"latency_ms":5}}"#, stamp(i * 10)).into_bytes())
    });
    produce_many(&p.brokers, &outcomes_topic, outcomes);
    let requests = (0..USERS).map(|i| {
        let user = format!("user-{i}");
        let value = format!(r#"{{"id":"r-{i}","ts":"{}","user_id":"{user}","tier":"pro","request_type":"standard"}}"#, stamp(i)).into_bytes();
        (user, value)
    });
    let produced = std::time::Instant::now();
    produce_many(&p.brokers, &requests_topic, requests);
    eprintln!("produced {USERS} requests and {DEPENDENCIES} outcomes in {:?} (requests)", produced.elapsed());
    // Every second: requests consumed, and the resident set.
    let consumed_key = format!("surgeguard_events_in_total{{topic=\"{requests_topic}\"}}");
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let t0 = std::time::Instant::now();
    loop {
        let text = metrics();
        let consumed = sample(&text, &consumed_key).unwrap_or(0.0);
        samples.push((t0.elapsed().as_secs_f64(), consumed));
        if consumed >= USERS as f64 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "consumed {consumed} of {USERS} requests in 600 s");
        std::thread::sleep(Duration::from_secs(1));
    }
    let text = metrics();
    let (rss, peak) = rss_mb(pid);
    let entries = |table: &str| sample(&text, &format!("surgeguard_table_entries{{table=\"{table}\"}}")).unwrap_or(-1.0);
    let (keys, learned) = (entries("limiter_keys"), entries("learned_dependencies"));
    let displaced = sample(&text, "surgeguard_users_displaced_total").unwrap_or(0.0);
    let refused = sample(&text, "surgeguard_breaker_outcomes_refused_total").unwrap_or(0.0);
    // The rate over the first and the last fifth of the requests.
    let rate = |from: f64, to: f64| {
        let at = |n: f64| samples.iter().find(|(_, c)| *c >= n).map(|(t, _)| *t).unwrap_or(f64::NAN);
        (to - from) / (at(to) - at(from)).max(1.0)
    };
    let n = USERS as f64;
    let (first, last) = (rate(0.05 * n, 0.25 * n), rate(0.75 * n, 0.95 * n));
    let tenths: Vec<String> = (1..10).map(|k| format!("{:.0}", rate(k as f64 * 0.1 * n - 0.1 * n, k as f64 * 0.1 * n))).collect();
    eprintln!("requests/s per tenth of the requests (from the second): {}", tenths[1..].join(", "));
    eprintln!(
        "a million users, 100 000 dependencies: RSS {rss:.0} MB (peak {peak:.0} MB); limiter keys {keys} (cap {} over 3 partitions), {displaced} displaced; learned dependencies {learned}, {refused} outcomes refused; {first:.0} requests/s over the first fifth, {last:.0} over the last",
        KEYS_PER_PARTITION * 3
    );
    assert!(keys >= 0.0 && keys <= (KEYS_PER_PARTITION * 3) as f64, "limiter keys {keys} over the cap");
    assert!(displaced >= (USERS - KEYS_PER_PARTITION * 3) as f64, "{displaced} users displaced");
    assert!((0.0..=1000.0).contains(&learned), "learned dependencies {learned} over the cap");
    assert!(refused >= (DEPENDENCIES - 1000) as f64 - 1.0, "{refused} outcomes refused");
    // Bounded: far below what a million users' state took without a cap (266 MB in replay alone).
    assert!(peak < 600.0, "peak RSS {peak:.0} MB");
    assert!(last > first / 3.0, "the time per event grew as the tables filled: {first:.0}/s then {last:.0}/s");
    let child = service.0.as_mut().expect("running");
    assert!(child.try_wait().expect("wait").is_none(), "surgeguard run exited");
    let status = service.stop();
    assert!(status.success(), "surgeguard run exited with {status} on SIGTERM");
    std::fs::remove_file(&log).ok();
}
