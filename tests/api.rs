//! The HTTP API of `surgeguard run` on the mock cluster, during the seed's surge: health and
//! readiness, the limits, breakers, alerts and predictions as JSON, errors as
//! application/problem+json, and Prometheus metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use surgeguard::apps::scenario::{Surge, monday_surge};
use surgeguard::config::Config;
use surgeguard::kafka::topics;
use surgeguard::wire::events::InputEvent;

struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    /// Status, content type and body.
    fn get(&self, path: &str) -> (u16, String, String) {
        let mut r = self.agent.get(format!("{}{path}", self.base)).call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = r.body_mut().read_to_string().expect("body");
        (r.status().as_u16(), ct, body)
    }

    fn json(&self, path: &str) -> Value {
        let (status, ct, body) = self.get(path);
        assert_eq!((status, ct.as_str()), (200, "application/json"), "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON body")
    }

    fn problem(&self, path: &str, status: u16) -> Value {
        let (s, ct, body) = self.get(path);
        assert_eq!((s, ct.as_str()), (status, "application/problem+json"), "GET {path}: {body}");
        let v: Value = serde_json::from_str(&body).expect("problem JSON");
        assert_eq!(v["status"], status);
        assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
        v
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_the_pipelines_state() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let port = free_port();
    let mut cfg = Config::default();
    cfg.kafka.create_topics = false;
    cfg.kafka.group_id = "api".into();
    cfg.kafka.wall_clock_after_idle_ms = 0;
    cfg.api.listen = format!("127.0.0.1:{port}");
    for spec in topics::specs(&cfg) {
        cluster.create_topic(&spec.name, spec.partitions, 1).expect("create topic");
    }
    let cfg = Arc::new(cfg);
    let http = Http { agent: ureq::Agent::config_builder().http_status_as_error(false).build().into(), base: format!("http://127.0.0.1:{port}") };

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
    // Up, then ready once the group has assigned the partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = tokio::task::spawn_blocking(move || {
        loop {
            if let Ok(mut r) = http.agent.get(format!("{}/readyz", http.base)).call() {
                if r.status() == 200 {
                    assert_eq!(r.body_mut().read_to_string().expect("body"), "ready\n");
                    break;
                }
            }
            assert!(Instant::now() < deadline, "not ready in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        http
    })
    .await;
    let http = match ready {
        Ok(http) => http,
        Err(e) => {
            // Stop the service before failing: a test that panics with it running hangs in the
            // runtime's teardown.
            stop.send(()).ok();
            let _ = tokio::time::timeout(Duration::from_secs(60), service).await;
            panic!("readiness: {e}");
        }
    };

    // The surge, requests and the backend's outcomes and telemetry.
    let events = monday_surge(&Surge::default());
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "5").create().expect("producer");
    let mut pending = Vec::new();
    for e in &events {
        let (topic, key) = match e {
            InputEvent::Request(r) => (&cfg.topics.requests, r.user_id.to_string()),
            InputEvent::Outcome(o) => (&cfg.topics.outcomes, o.dependency.to_string()),
            InputEvent::Telemetry(t) => (&cfg.topics.telemetry, t.source.to_string()),
            InputEvent::Admin(a) => (&cfg.topics.admin, a.dependency.to_string()),
        };
        let mut value = Vec::new();
        e.write_tagged_line(&mut value).expect("encodable");
        pending.push(producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)).map_err(|(e, _)| e).expect("enqueued"));
    }
    for p in pending {
        p.await.expect("delivery report").map_err(|(e, _)| e).expect("produced");
    }
    let requests = events.iter().filter(|e| matches!(e, InputEvent::Request(_))).count();
    let outcomes = events.iter().filter(|e| matches!(e, InputEvent::Outcome(_))).count();

    let queries = tokio::task::spawn_blocking(move || {
        // Wait until the metrics count every request and every outcome in.
        let count = |m: &str, topic: &str| -> f64 {
            let prefix = format!("surgeguard_events_in_total{{topic=\"{topic}\"}}");
            m.lines().find(|l| l.starts_with(&prefix)).and_then(|l| l.split_whitespace().last()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let m = loop {
            let (status, ct, m) = http.get("/metrics");
            assert!(status == 200 && ct.starts_with("text/plain; version=0.0.4"), "{status} {ct}: {m}");
            if count(&m, "surgeguard.requests") >= requests as f64 && count(&m, "surgeguard.outcomes") >= outcomes as f64 {
                break m;
            }
            assert!(Instant::now() < deadline, "requests in: {}, outcomes in: {}", count(&m, "surgeguard.requests"), count(&m, "surgeguard.outcomes"));
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(m.contains("surgeguard_decisions_total{decision=\"allow\",tier=\"free\"}"), "{m}");
        assert!(m.contains("surgeguard_processing_seconds_bucket") && m.contains("surgeguard_ready 1"), "{m}");
        let limit_line = m.lines().find(|l| {
            l.starts_with("surgeguard_limit_adjusted_requests_per_minute{") && l.contains("tier=\"free\"") && l.contains("request_type=\"standard\"")
        });
        assert!(limit_line.is_some(), "{m}");
        // Exactly one state of each configured dependency's breaker is 1.
        for dep in ["ai_primary", "ai_secondary", "database"] {
            let on: Vec<&str> = m.lines().filter(|l| l.starts_with(&format!("surgeguard_breaker_state{{dependency=\"{dep}\"")) && l.ends_with(" 1")).collect();
            assert_eq!(on.len(), 1, "{dep}: {on:?}\n{m}");
        }
        assert_eq!(http.get("/healthz"), (200, "text/plain; charset=utf-8".into(), "ok\n".into()));

        let limits = http.json("/v1/limits");
        assert_eq!(limits.as_array().map(Vec::len), Some(9), "{limits}");
        let free = http.json("/v1/limits/free/standard");
        assert_eq!(free["key"], "free/standard");
        assert!(free["adjusted_rpm"].as_u64().is_some() && free["multipliers"]["api"].is_number(), "{free}");
        http.problem("/v1/limits/platinum/standard", 404);

        let breakers = http.json("/v1/breakers");
        assert!(breakers.as_array().is_some_and(|b| b.iter().any(|b| b["dependency"] == "ai_primary")), "{breakers}");
        assert_eq!(http.json("/v1/breakers/ai_primary")["dependency"], "ai_primary");
        http.problem("/v1/breakers/nonesuch", 404);

        let alerts = http.json("/v1/alerts");
        let all = alerts.as_array().expect("a list");
        assert!(all.iter().any(|a| a["rule"] == "breaker_tripped"), "the surge trips a breaker: {alerts}");
        // (Telemetry may still be arriving and raising alerts between the two requests: the
        // later answer holds every earlier alert at or after `since`, and only those.)
        let mid = all[all.len() / 2]["ts"].as_str().expect("ts").to_string();
        let since = http.json(&format!("/v1/alerts?since={mid}"));
        let since = since.as_array().expect("a list");
        assert!(since.iter().all(|a| a["ts"].as_str().unwrap_or("") >= mid.as_str()), "since={mid}");
        for a in all.iter().filter(|a| a["ts"].as_str().unwrap_or("") >= mid.as_str()) {
            assert!(since.contains(a), "{a} missing from since={mid}");
        }

        let p = http.problem("/v1/alerts?since=yesterday", 400);
        assert!(p["detail"].as_str().unwrap_or("").contains("RFC 3339"), "{p}");
        assert_eq!(http.json("/v1/predictions"), serde_json::json!([]), "no model configured");
        http.problem("/v1/nothing-here", 404);
    })
    .await;

    stop.send(()).ok();
    let stopped = tokio::time::timeout(Duration::from_secs(60), service).await;
    if let Err(e) = queries {
        panic!("queries: {e}");
    }
    let stats = stopped.expect("stopped within 60 s").expect("service task").expect("service stopped cleanly");
    // (Control events may still be coming in: the test waited for the requests only.)
    assert!(stats.consumed as usize >= requests, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0);
}
