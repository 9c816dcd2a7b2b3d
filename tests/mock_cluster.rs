//! `surgeguard run` on librdkafka's in-process mock cluster, with faults injected: a broker goes
//! down and comes back, and produce requests fail with retriable errors. Nothing may be lost:
//! every request still gets its decision. (The mock cluster speaks the real Kafka protocol but
//! has no CreateTopics API, so the topics are made with `MockCluster::create_topic`.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use surgeguard::apps::scenario::{Surge, monday_surge};
use surgeguard::config::Config;
use surgeguard::kafka::topics;
use surgeguard::wire::events::InputEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_a_broker_goes_down_and_requests_fail() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    let cluster = MockCluster::new(3).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut cfg = Config::default();
    cfg.kafka.create_topics = false;
    cfg.kafka.group_id = "mock-faults".into();
    cfg.api.listen = "127.0.0.1:0".into();
    // Event time only: the requests carry fixed times that the wall clock must not overtake.
    cfg.kafka.wall_clock_after_idle_ms = 0;
    for spec in topics::specs(&cfg) {
        cluster.create_topic(&spec.name, spec.partitions, 3).expect("create topic");
    }
    let cfg = Arc::new(cfg);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = {
        let (cfg, brokers) = (cfg.clone(), brokers.clone());
        tokio::spawn(async move {
            surgeguard::apps::run::run(cfg, &brokers, async {
                stopped.await.ok();
            })
            .await
        })
    };

    let requests: Vec<_> = monday_surge(&Surge { backend: false, ..Surge::default() })
        .into_iter()
        .filter_map(|e| match e {
            InputEvent::Request(r) => Some(r),
            _ => None,
        })
        .take(6000)
        .collect();
    let ids: BTreeSet<String> = requests.iter().map(|r| r.id.to_string()).collect();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "5").create().expect("producer");
    // Everything is enqueued without waiting: while broker 2 is down, the partitions it leads
    // take nothing, for our producer and for surgeguard's alike, until it is back.
    let mut pending = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if i == 2000 {
            // Retriable produce errors for the next produce requests (ours and surgeguard's).
            cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 6]);
        }
        if i == 3000 {
            cluster.broker_down(2).expect("broker down");
        }
        if i == 4500 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.broker_up(2).expect("broker up");
        }
        let value = serde_json::to_vec(r).expect("encodable");
        let record = FutureRecord::to(&cfg.topics.requests).key(r.user_id.as_str()).payload(&value);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueued"));
    }
    for p in pending {
        p.await.expect("delivery report").map_err(|(e, _)| e).expect("produced");
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "mock-faults-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&cfg.topics.decisions]).expect("subscribe");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < ids.len() && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).expect("decision JSON");
            seen.insert(v["request_id"].as_str().unwrap_or_default().to_string());
        }
    }
    let missing = ids.difference(&seen).count();
    assert_eq!(missing, 0, "{missing} of {} requests lost through the faults", ids.len());

    stop.send(()).ok();
    let stats = service.await.expect("service task").expect("service stopped cleanly");
    assert_eq!(stats.consumed, ids.len() as u64);
    assert_eq!(stats.dead_lettered, 0);
}

/// Produce requests failing for good (not retriable, not the record's size) restart the pipeline
/// in the process: the HTTP API stays up on its address, and every request ends decided, or, as
/// `quarantined` in the DLQ, when its outputs were what failed (`kafka.quarantine_after = 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_produce_requests_restart_the_pipeline_in_place() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut cfg = Config::default();
    cfg.kafka.create_topics = false;
    cfg.kafka.group_id = "mock-restarts".into();
    cfg.api.listen = "127.0.0.1:0".into();
    cfg.kafka.wall_clock_after_idle_ms = 0;
    cfg.kafka.restart_backoff_ms = 10;
    cfg.kafka.restart_backoff_max_ms = 100;
    cfg.kafka.quarantine_after = 1;
    // The mock cluster's group keeps a member that left until its session times out (a real
    // broker lets it go with its LeaveGroup): keep that short, so each restart joins quickly.
    cfg.kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    cfg.kafka.properties.insert("heartbeat.interval.ms".into(), "1000".into());
    cfg.kafka.partitions.requests = 1;
    cfg.kafka.partitions.decisions = 1;
    for spec in topics::specs(&cfg) {
        cluster.create_topic(&spec.name, spec.partitions, 1).expect("create topic");
    }
    let cfg = Arc::new(cfg);
    let requests: Vec<_> = monday_surge(&Surge { backend: false, ..Surge::default() })
        .into_iter()
        .filter_map(|e| match e {
            InputEvent::Request(r) => Some(r),
            _ => None,
        })
        .take(200)
        .collect();
    let ids: BTreeSet<String> = requests.iter().map(|r| r.id.to_string()).collect();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("producer");
    for r in &requests {
        let value = serde_json::to_vec(r).expect("encodable");
        let record = FutureRecord::to(&cfg.topics.requests).key(r.user_id.as_str()).payload(&value);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produced");
    }
    // The service's first produce requests fail for good.
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (api_tx, api_rx) = tokio::sync::oneshot::channel();
    let service = {
        let (cfg, brokers) = (cfg.clone(), brokers.clone());
        tokio::spawn(async move {
            let options = surgeguard::apps::run::RunOptions { on_api: Some(api_tx), ..Default::default() };
            surgeguard::apps::run::run_with(cfg, &brokers, options, async {
                stopped.await.ok();
            })
            .await
        })
    };
    let api = tokio::time::timeout(Duration::from_secs(60), api_rx).await.expect("the API listens").expect("address");

    let read = |topic: &str, group: &str| {
        let consumer: StreamConsumer =
            ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", group).set("auto.offset.reset", "earliest").create().expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        consumer
    };
    let (decisions, dlq) = (read(&cfg.topics.decisions, "mock-restarts-decisions"), read(&cfg.topics.dlq, "mock-restarts-dlq"));
    let (mut decided, mut quarantined, mut dead_letters) = (BTreeSet::new(), BTreeSet::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while decided.union(&quarantined).count() < ids.len() && Instant::now() < deadline {
        tokio::select! {
            Ok(m) = decisions.recv() => {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).expect("decision JSON");
                decided.insert(v["request_id"].as_str().unwrap_or_default().to_string());
            }
            Ok(m) = dlq.recv() => {
                use rdkafka::message::Headers;
                let kind = m.headers().and_then(|h| h.iter().find(|h| h.key == surgeguard::wire::dlq::EXCEPTION).and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string())));
                assert_eq!(kind.as_deref(), Some("quarantined"), "only quarantined inputs reach the DLQ here");
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).expect("request JSON");
                quarantined.insert(v["id"].as_str().unwrap_or_default().to_string());
                dead_letters += 1;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    let missing: Vec<_> = ids.iter().filter(|id| !decided.contains(*id) && !quarantined.contains(*id)).take(5).collect();
    assert!(missing.is_empty(), "requests neither decided nor quarantined, e.g. {missing:?}");
    // The HTTP API stayed up on the same address through the restarts.
    let health = tokio::task::spawn_blocking(move || ureq::get(&format!("http://{api}/healthz")).call().map(|r| r.status().as_u16())).await.expect("task");
    assert_eq!(health.ok(), Some(200), "the API still answers on its address");

    stop.send(()).ok();
    let stats = service.await.expect("service task").expect("service stopped cleanly");
    assert!(stats.restarts >= 1, "the failed produce requests restarted the pipeline: {stats:?}");
    // (A quarantined input whose dead letter failed too is dead-lettered again after the next
    // restart.)
    assert!(stats.quarantined >= dead_letters.min(1) && dead_letters >= u64::from(stats.quarantined > 0), "{stats:?}, {dead_letters} dead letters");
    assert!(quarantined.len() <= 4, "at most one input quarantined per failed produce request: {quarantined:?}");
}
