//! `surgeguard whatif` end to end: request history in Parquet (written by the history writer),
//! two pipeline files, the report by hand and beside replay; bad input.

mod support;

use std::process::Command;

use serde_json::Value;
use support::Scratch;
use surgeguard::history::parquet::HistoryWriter;
use surgeguard::wire::events::{InputEvent, RequestEvent};
use surgeguard::wire::time::Millis;

const T0: i64 = 1_767_571_200_000; // 2026-01-05T00:00:00Z
const MINUTE: i64 = 60_000;

fn burst(user: &str, tier: &str, minute: i64, n: u32) -> Vec<RequestEvent> {
    (0..n)
        .map(|k| RequestEvent {
            id: format!("{user}-{minute}-{k}").into(),
            ts: Millis(T0 + minute * MINUTE + i64::from(k) * 100),
            user_id: user.into(),
            tier: tier.into(),
            request_type: "standard".into(),
            cost: 1,
        })
        .collect()
}

/// A free user's 75 requests in minute 0 and 20 in minute 5, a pro user's 30 in minute 5.
fn requests() -> Vec<RequestEvent> {
    let mut all = burst("u1", "free", 0, 75);
    all.extend(burst("u1", "free", 5, 20));
    all.extend(burst("p1", "pro", 5, 30));
    all.sort_by_key(|r| r.ts);
    all
}

fn whatif(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(support::bin()).arg("whatif").args(args).output().expect("run surgeguard");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn two_policies_by_hand_and_as_replay_decides() {
    let dir = Scratch::new("whatif");
    // Two writers (as two archive partitions would), each user in its own files: whatif reads
    // them together in time order.
    let history = dir.path("history");
    for (name, user) in [("part-0", "u1"), ("part-1", "p1")] {
        let mut w = HistoryWriter::new(&history, name);
        for r in requests().into_iter().filter(|r| r.user_id == user) {
            w.write(&r).expect("write");
        }
        w.finish().expect("finish");
    }
    let default = support::root().join("pipelines/default.toml").to_string_lossy().to_string();
    let strict = dir.write("strict.toml", "[tiers.free]\nbaseline_rpm = 30\nminimum_guaranteed = 10\nmaximum_burst = 60\ngrace_allowance = 10\ngrace_window_s = 3600\n[tiers.pro]\nbaseline_rpm = 600\nminimum_guaranteed = 100\nmaximum_burst = 1200\ngrace_allowance = 60\ngrace_window_s = 3600\n[tiers.enterprise]\nbaseline_rpm = 3000\nminimum_guaranteed = 1000\nmaximum_burst = 6000\ngrace_allowance = 300\ngrace_window_s = 3600\n");
    let report = dir.path("report.json");
    let (ok, stdout, stderr) =
        whatif(&["--history", &history.to_string_lossy(), "--config", &default, "--config", &strict, "--capacity", "60", "--out", &report.to_string_lossy()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("policy default") && stdout.contains("policy strict"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let counts =
        |p: &Value, tier: &str| (p["by_tier"][tier]["allowed"].as_u64(), p["by_tier"][tier]["graced"].as_u64(), p["by_tier"][tier]["throttled"].as_u64());
    let (d, s) = (&r["policies"][0], &r["policies"][1]);
    assert_eq!((d["name"].as_str(), s["name"].as_str()), (Some("default"), Some("strict")));
    // By hand: 60 allowed + 10 graced + 5 throttled in minute 0, 20 allowed in minute 5.
    assert_eq!(counts(d, "free"), (Some(80), Some(10), Some(5)));
    assert_eq!(counts(d, "pro"), (Some(30), Some(0), Some(0)));
    assert_eq!(counts(s, "free"), (Some(50), Some(10), Some(35)));
    // 70 let through in minute 0 by default (above 60), 50 with the strict policy; 75 unlimited.
    assert_eq!((d["admitted"]["peak_per_minute"].as_u64(), d["admitted"]["minutes_above"].as_u64()), (Some(70), Some(1)));
    assert_eq!((s["admitted"]["peak_per_minute"].as_u64(), s["admitted"]["minutes_above"].as_u64()), (Some(50), Some(0)));
    assert_eq!((r["unlimited"]["peak_per_minute"].as_u64(), r["unlimited"]["minutes"].as_u64()), (Some(75), Some(6)));

    // The same requests through replay with the default pipeline decide the same.
    let input = support::jsonl(&requests().into_iter().map(InputEvent::Request).collect::<Vec<_>>());
    let (_, summary) = support::run(support::default_config(), &input);
    let c = summary.counters;
    assert_eq!((c.allowed, c.graced, c.throttled), (110, 10, 5));
}

#[test]
fn bad_history_gives_a_clear_error() {
    let dir = Scratch::new("whatif-bad");
    let default = support::root().join("pipelines/default.toml").to_string_lossy().to_string();
    let no_user = dir.write("no-user.csv", "ts,id\n2026-01-05T00:00:00Z,a\n");
    let zero_cost = dir.write("zero-cost.csv", "ts,id,user_id,cost\n2026-01-05T00:00:00Z,a,u,1\n2026-01-05T00:00:01Z,b,u,0\n");
    let not_parquet = dir.write("broken.parquet", "PAR1 this is not parquet at all PAR1");
    let no_user_value = dir.write("null-user.csv", "ts,id,user_id\n2026-01-05T00:00:00Z,a,u\n2026-01-05T00:00:01Z,b,\n");
    let missing = dir.path("nothing-here").to_string_lossy().to_string();
    for (path, expect) in [
        (no_user.as_str(), "no column \"user_id\""),
        (zero_cost.as_str(), "cost 0"),
        (no_user_value.as_str(), "no user_id"),
        (not_parquet.as_str(), "Parquet"),
        (missing.as_str(), "nothing-here"),
    ] {
        let (ok, _, stderr) = whatif(&["--history", path, "--config", &default]);
        assert!(!ok, "{path} accepted");
        assert!(stderr.contains(expect), "{path}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (ok, _, stderr) = whatif(&["--history", &no_user, "--config", &default, "--capacity=-5"]);
    assert!(!ok && stderr.contains("--capacity"), "{stderr}");
}
