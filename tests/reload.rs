//! Hot reload of `surgeguard run` (the binary, on the mock cluster): a changed file's tier limit
//! takes effect on the next decisions; SIGHUP reloads too; a broken file, and one that changes
//! what needs a restart, are refused and logged, and the old limits stay.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use serde_json::{Value, json};
use surgeguard::kafka::topics;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The default config with the free tier's baseline, the API port and a test group.
fn config(port: u16, free_baseline: u32) -> String {
    let text = std::fs::read_to_string(support::root().join("pipelines/default.toml")).expect("default.toml");
    let replaced = text
        .replacen("[tiers.free]\nbaseline_rpm = 60", &format!("[tiers.free]\nbaseline_rpm = {free_baseline}"), 1)
        .replacen("listen = \"127.0.0.1:8480\"", &format!("listen = \"127.0.0.1:{port}\""), 1)
        .replacen("group_id = \"surgeguard\"", "group_id = \"reload\"", 1)
        .replacen("create_topics = true", "create_topics = false", 1)
        .replacen("wall_clock_after_idle_ms = 2000", "wall_clock_after_idle_ms = 0", 1);
    assert!(replaced.contains(&format!("baseline_rpm = {free_baseline}")) && replaced.contains(&port.to_string()), "default.toml changed shape");
    replaced
}

fn get(agent: &ureq::Agent, url: &str) -> Option<Value> {
    let mut r = agent.get(url).call().ok()?;
    if r.status() != 200 {
        return None;
    }
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}

/// Waits up to 30 s for the free/standard limit to be `rpm`.
fn wait_limit(agent: &ureq::Agent, base: &str, rpm: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = get(agent, &format!("{base}/v1/limits/free/standard"));
        if l.as_ref().is_some_and(|l| l["adjusted_rpm"] == rpm) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("free/standard never reached {rpm}: {l:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log's length now: `wait_log` looks only at what comes after it.
fn mark(log: &std::path::Path) -> usize {
    std::fs::read(log).map_or(0, |b| b.len())
}

/// Waits up to 30 s for the service's log after `from` to contain `needle`.
fn wait_log(log: &std::path::Path, from: usize, needle: &str, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read(log).ok().and_then(|b| b.get(from..).map(|t| String::from_utf8_lossy(t).contains(needle))).unwrap_or(false) {
        if Instant::now() > deadline {
            return Err(what.into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// How many of `n` decisions for a fresh user are plain `allow`.
fn allowed(agent: &ureq::Agent, base: &str, user: &str, n: usize) -> usize {
    let ts = surgeguard::wire::time::Millis(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64).to_string();
    (0..n)
        .filter(|i| {
            let body = json!({"id": format!("{user}-{i}"), "ts": ts, "user_id": user, "tier": "free", "request_type": "standard"}).to_string();
            let mut r = agent.post(format!("{base}/v1/decide")).header("content-type", "application/json").send(body).expect("decide");
            let v: Value = serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("JSON");
            v["decision"] == "allow"
        })
        .count()
}

#[test]
fn a_changed_file_reloads_limits_and_a_broken_one_is_refused() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let cfg = surgeguard::config::Config::default();
    for spec in topics::specs(&cfg) {
        // One requests partition: this instance owns every user.
        let partitions = if spec.name == cfg.topics.requests || spec.name == cfg.topics.changelog { 1 } else { spec.partitions };
        cluster.create_topic(&spec.name, partitions, 1).expect("create topic");
    }
    let dir = support::Scratch::new("reload");
    let port = free_port();
    let path = dir.write("pipeline.toml", &config(port, 60));
    let log_path = dir.path("run.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(support::bin())
        .args(["run", "--config", &path, "--brokers", &brokers])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("surgeguard run");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let base = format!("http://127.0.0.1:{port}");
    let result = (|| -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(&agent, &format!("{base}/v1/assignment")).is_none_or(|a| a["ready"] != true) {
            if Instant::now() > deadline {
                return Err("not ready".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Before: 60 a minute.
        if allowed(&agent, &base, "before", 70) != 60 {
            return Err("60 allowed before the reload".into());
        }
        wait_limit(&agent, &base, 60)?;
        // The file changes: 15 a minute (the tier's minimum is 10), from the next decision on.
        std::fs::write(&path, config(port, 15)).map_err(|e| e.to_string())?;
        wait_limit(&agent, &base, 15)?;
        let n = allowed(&agent, &base, "after", 20);
        if n != 15 {
            return Err(format!("{n} allowed after the reload, expected 15"));
        }
        // A broken file: refused, logged, the limit stays.
        let from = mark(&log_path);
        std::fs::write(&path, config(port, 15).replacen("baseline_rpm = 15", "baseline_rpm = \"lots\"", 1)).map_err(|e| e.to_string())?;
        wait_log(&log_path, from, "config reload refused", "the broken file was not reported")?;
        std::thread::sleep(Duration::from_millis(1500));
        wait_limit(&agent, &base, 15)?;
        if allowed(&agent, &base, "broken", 20) != 15 {
            return Err("the old limit stays after a broken file".into());
        }
        // A change that needs a restart (the group) is refused as a whole, even with a new limit.
        let from = mark(&log_path);
        std::fs::write(&path, config(port, 30).replacen("group_id = \"reload\"", "group_id = \"elsewhere\"", 1)).map_err(|e| e.to_string())?;
        wait_log(&log_path, from, "need a restart: kafka", "the restart-needing change was not reported")?;
        wait_limit(&agent, &base, 15)?;
        // SIGHUP: the file is read again (the watch may notice the write first; either way the
        // new limit applies, and the signal must not stop the service).
        let from = mark(&log_path);
        std::fs::write(&path, config(port, 25)).map_err(|e| e.to_string())?;
        Command::new("kill").args(["-HUP", &child.id().to_string()]).status().map_err(|e| e.to_string())?;
        wait_limit(&agent, &base, 25)?;
        // The signal itself made a reload (logged with its reason), and did not stop the service.
        wait_log(&log_path, from, "reason=\"SIGHUP\"", "no reload on SIGHUP")?;
        let alive = agent.get(format!("{base}/healthz")).call().map(|r| r.status().as_u16()).map_err(|e| e.to_string())?;
        if alive != 200 {
            return Err(format!("/healthz after SIGHUP: {alive}"));
        }
        Ok(())
    })();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut log)).ok();
    if let Err(e) = result {
        panic!("{e}\n--- log ---\n{log}");
    }
    assert!(status.is_some_and(|s| s.success()), "stopped cleanly on SIGTERM: {status:?}\n{log}");
    assert!(log.contains("config reloaded: applying"), "{log}");
}
