//! `surgeguard replay` end to end: determinism, error reporting, and what the surge produces.

mod support;

use std::process::Command;

use surgeguard::apps::scenario::{Surge, monday_surge};

#[test]
fn replay_is_byte_identical_across_runs() {
    let input = support::jsonl(&monday_surge(&Surge::default()));
    let (a, sa) = support::run(support::default_config(), &input);
    let (b, sb) = support::run(support::default_config(), &input);
    assert_eq!(sa, sb);
    assert!(a == b, "two replays of the same input differ");
    assert!(sa.outputs["decisions"] > 50_000, "{:?}", sa.outputs);
}

#[test]
fn the_surge_throttles_opens_the_upstream_breaker_and_cuts_limits() {
    let input = support::jsonl(&monday_surge(&Surge::default()));
    let (out, s) = support::run(support::default_config(), &input);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |topic: &'static str| lines.iter().filter(move |v| v["topic"] == topic);
    assert!(s.counters.throttled > 0 && s.counters.graced > 0, "{:?}", s.counters);
    let opened = of("breakers").find(|b| b["dependency"] == "ai_primary" && b["state"] == "open").expect("ai_primary opens");
    assert_eq!(opened["fallback"][0]["kind"], "alternative");
    assert_eq!(opened["fallback"][0]["dependency"], "ai_secondary");
    let cut = of("limits").find(|l| l["key"] == "free/standard" && l["adjusted_rpm"].as_u64().unwrap() < 60).expect("free limit is cut under load");
    assert!(cut["reason"].as_str().unwrap() != "healthy");
    let rules: Vec<&str> = of("alerts").map(|a| a["rule"].as_str().unwrap()).collect();
    assert!(rules.contains(&"breaker_tripped") && rules.contains(&"throttling"), "{rules:?}");
    // Every request gets exactly one decision.
    assert_eq!(of("decisions").count() as u64, s.counters.requests);
    // Decisions carry the RateLimit fields.
    let d = of("decisions").next().unwrap();
    assert_eq!(d["policy"], format!("{};w=60", d["limit"]));
}

#[test]
fn cli_reports_bad_lines_with_their_number_and_counts_them() {
    let dir = std::env::temp_dir().join(format!("sg-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let good = r#"{"topic":"requests","id":"r1","ts":"2026-11-30T09:00:00Z","user_id":"u1","tier":"pro","request_type":"standard"}"#;
    let lines = [
        good,
        "{not json",
        r#"{"topic":"telemetry","ts":"2026-11-30T09:00:01Z","source":"h","cpu":1.7,"memory":0.1,"db_connections_in_use":1,"db_connections_max":2}"#,
        "",
        r#"{"topic":"surgeguard.requests","id":"r2","ts":"2026-11-30T09:00:02Z","user_id":"u1","tier":"platinum","request_type":"standard"}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.join("out.jsonl");
    let res = Command::new(support::bin())
        .args(["replay", "--config"])
        .arg(support::root().join("pipelines/default.toml"))
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(stderr.contains("in.jsonl:2: skipped: invalid JSON"), "{stderr}");
    assert!(stderr.contains("in.jsonl:3: skipped: field `cpu`"), "{stderr}");
    assert!(stderr.contains("skipped 2 undecodable"), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let decisions: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v["topic"] == "decisions").collect();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[1]["tier"], "free");
    assert_eq!(decisions[1]["unknown_tier"], "platinum");
    std::fs::remove_dir_all(&dir).ok();
}
