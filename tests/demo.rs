//! The embedded demo, as `surgeguard demo` runs it (mock cluster, the real `run` path, the
//! simulated backend): through the surge the protected run keeps its success rate at 99 % or
//! better, and the unprotected run collapses and does not recover, as the demo itself measures.

use surgeguard::apps::demo::{self, DemoOptions};
use surgeguard::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_keeps_the_surge_served_and_its_absence_collapses() {
    let opts = DemoOptions { seed: 7, speed: 0.0 };
    let without = demo::unprotected(&opts).await;
    // Any free port for the API (8480 may be taken on a developer's machine).
    let mut cfg = Config::default();
    cfg.api.listen = "127.0.0.1:0".into();
    let with = demo::protected(cfg, &opts, |_| {}).await.expect("protected run");
    let table = demo::table(&without, &with);
    assert_eq!(without.requests, with.requests, "both runs see the same demand\n{table}");
    assert!(with.success_rate() >= 0.99, "protected success {:.4}\n{table}", with.success_rate());
    assert!(with.recovered, "the protected run ends healthy\n{table}");
    assert!(without.success_rate() < 0.8, "unprotected success {:.4}\n{table}", without.success_rate());
    assert!(!without.recovered && without.timed_out > 0, "the unprotected run collapses\n{table}");
    assert!(with.breaker_trips > 0 && with.alerts > 0 && with.throttled > 0, "{table}");
}

/// A `POST /v1/decide` during the demo leaves its table as it is (within the demo's own run-to-run
/// variation): a decide without `ts` (the wall
/// clock, hours from the simulated morning) is refused with 422 and the stream's time; one at
/// the stream's time is decided and moves nothing else. (Issue 18: one decide used to move the
/// demo's event time to the wall clock, and the protected run then showed 1 breaker trip instead
/// of 10.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decide_during_the_demo_leaves_its_table_unchanged() {
    let opts = DemoOptions { seed: 7, speed: 0.0 };
    let mut cfg = Config::default();
    cfg.api.listen = "127.0.0.1:0".into();
    let plain = demo::protected(cfg.clone(), &opts, |_| {}).await.expect("protected run");
    let mut embedded = demo::Embedded::start(cfg).await.expect("embedded service");
    let api = embedded.api.expect("the API listens");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("http://{api}/v1/decide");
    // Decides while the surge runs: the first as soon as the stream has a time.
    let decides = tokio::task::spawn_blocking(move || {
        let post = |body: String| {
            let mut r = agent.post(&url).header("content-type", "application/json").send(body).expect("POST /v1/decide");
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
        };
        // Once the surge's events have given the stream its time (a decide before any event
        // would start it).
        let metrics = url.replace("/v1/decide", "/metrics");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let text = agent.get(&metrics).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok()).unwrap_or_default();
            let time = text.lines().find_map(|l| l.strip_prefix("surgeguard_event_time_seconds ")).and_then(|v| v.trim().parse::<i64>().ok());
            if time.is_some_and(|t| t > 0) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the demo's stream has no event time after 60 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (status, body) = post(r#"{"id":"probe-1","user_id":"probe","tier":"free","request_type":"standard"}"#.into());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let stream_time = v["stream_time"].as_str().map(str::to_string);
        let at_stream =
            stream_time.as_ref().map(|ts| post(format!(r#"{{"id":"probe-2","ts":"{ts}","user_id":"probe","tier":"free","request_type":"standard"}}"#)));
        (status, body, at_stream)
    });
    let with = embedded.surge(&opts).await.expect("surge");
    embedded.stop().await.expect("stopped");
    let (status, body, at_stream) = decides.await.expect("decides");
    assert_eq!(status, 422, "a decide at the wall clock during the demo: {body}");
    let (status, body) = at_stream.expect("the 422 names the stream's time");
    assert_eq!(status, 200, "a decide at the stream's time: {body}");
    // The demo runs against the wall clock through a real (mock) cluster, so two plain runs
    // differ a little (seen: 17 and 18 alerts, 9 206 and 9 585 throttled; 10 breaker trips each time); a decide that moved the
    // demo's time would show 1 breaker trip instead of 10 and 3 alerts instead of 17.
    let table = demo::table(&plain, &with);
    assert_eq!(with.requests, plain.requests, "{table}");
    assert!(with.breaker_trips.abs_diff(plain.breaker_trips) <= 2, "breaker trips with decides during the demo\n{table}");
    assert!(with.alerts.abs_diff(plain.alerts) <= 2, "alerts with decides during the demo\n{table}");
    assert!(with.throttled.abs_diff(plain.throttled) * 10 <= plain.throttled, "throttled with decides during the demo\n{table}");
    assert!(with.success_rate() >= 0.99 && with.recovered, "{table}");
}
