//! Event time that one clock cannot break (issue 18, `[event_time]`), through replay and the
//! topology: far-future events on every topic change nothing but the DLQ count, a real silence
//! is taken, `clamp` restamps, and a synchronous decide never moves the pipeline's time.

mod support;

use std::sync::Arc;

use surgeguard::apps::scenario::{Surge, monday_surge};
use surgeguard::config::{Config, TooFarAhead};
use surgeguard::core::topology::Topology;
use surgeguard::wire::events::{InputEvent, OutcomeEvent, RequestEvent};
use surgeguard::wire::outputs::Output;
use surgeguard::wire::time::Millis;

/// 2099-12-31T23:59:59Z.
const YEAR_2099: Millis = Millis(4_102_444_799_000);

/// The surge's first 16 minutes (the ai_primary breaker trips, goes half-open and closes again;
/// load turns critical).
fn surge() -> Vec<InputEvent> {
    let s = Surge::default();
    let end = s.start.plus_ms(16 * 60_000);
    monday_surge(&s).into_iter().filter(|e| e.ts() < end).collect()
}

/// One valid event of each input topic, stamped `ts`.
fn one_of_each(ts: Millis, like: &[InputEvent]) -> Vec<InputEvent> {
    let mut out = Vec::new();
    for e in like {
        let mut e = e.clone();
        if out.iter().any(|o: &InputEvent| o.topic() == e.topic()) {
            continue;
        }
        e.set_ts(ts);
        if let InputEvent::Request(r) = &mut e {
            r.user_id = "from-the-future".into();
            r.id = "future-1".into();
        }
        out.push(e);
    }
    out
}

fn admin_event(ts: Millis) -> InputEvent {
    let line = format!(r#"{{"topic":"admin","ts":"{ts}","dependency":"database","action":"force_open"}}"#);
    surgeguard::wire::decode::decode_tagged(line.as_bytes()).expect("admin event")
}

fn replay(cfg: Arc<Config>, events: &[InputEvent]) -> (Vec<u8>, surgeguard::apps::replay::ReplaySummary, Vec<String>) {
    let input = support::jsonl(events);
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let summary = surgeguard::apps::replay::replay(cfg, &input[..], &mut out, |line, why| skipped.push(format!("{line}: {why}"))).expect("replay");
    (out, summary, skipped)
}

#[test]
fn far_future_events_on_every_topic_change_nothing_but_the_skipped_count() {
    let clean = surge();
    let (want, want_summary, _) = replay(support::default_config(), &clean);
    let text = String::from_utf8_lossy(&want);
    assert!(text.contains(r#""state":"half_open""#), "the clean surge has a half-open breaker");
    // The stamps of 2099, on every topic: together in the middle, and alone later on.
    let mut like = clean.clone();
    like.push(admin_event(Millis(0)));
    let future = one_of_each(YEAR_2099, &like);
    assert_eq!(future.len(), 4, "one of each input topic");
    let mut dirty = clean.clone();
    dirty.splice(clean.len() / 3..clean.len() / 3, future.iter().cloned());
    let at = 2 * dirty.len() / 3;
    dirty.insert(at, future[0].clone());
    dirty.push(future[2].clone());
    let (got, summary, skipped) = replay(support::default_config(), &dirty);
    assert_eq!(summary.too_far_ahead, 6, "{skipped:?}");
    assert_eq!(summary.skipped, 6);
    assert!(skipped.iter().all(|s| s.contains("event_time.max_future_skew_s") && s.contains("2099-12-31T23:59:59")), "{skipped:?}");
    let counters = surgeguard::core::topology::Counters { too_far_ahead: 6, ..want_summary.counters };
    assert_eq!(summary.counters, counters, "the same counters but for the refused events");
    assert_eq!(summary.tracked_users, want_summary.tracked_users, "idle users evicted as before");
    assert!(got == want, "the outputs are byte for byte the clean replay's");
}

#[test]
fn a_real_silence_longer_than_the_skew_is_taken_and_nothing_is_lost() {
    let clean = surge();
    // Everything after minute 8 comes two hours later: every input silent for two hours.
    let cut = Surge::default().start.plus_ms(8 * 60_000);
    let shifted: Vec<InputEvent> = clean
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e.ts() >= cut {
                e.set_ts(e.ts().plus_ms(2 * 3_600_000));
            }
            e
        })
        .collect();
    let (out, summary, skipped) = replay(support::default_config(), &shifted);
    assert_eq!(summary.skipped, 0, "{skipped:?}");
    let decisions = String::from_utf8_lossy(&out).lines().filter(|l| l.starts_with(r#"{"topic":"decisions""#)).count() as u64;
    assert_eq!(decisions, summary.counters.requests);
    assert_eq!(summary.counters.requests, clean.iter().filter(|e| matches!(e, InputEvent::Request(_))).count() as u64);
}

#[test]
fn clamp_processes_a_far_future_request_at_the_pipelines_time() {
    let mut cfg = Config::default();
    cfg.event_time.too_far_ahead = TooFarAhead::Clamp;
    let mut events = surge()[..2000].to_vec();
    let before = events.last().expect("events").ts();
    let mut like = events.clone();
    like.push(admin_event(Millis(0)));
    let future = one_of_each(YEAR_2099, &like);
    events.push(future.iter().find(|e| matches!(e, InputEvent::Request(_))).cloned().expect("a request"));
    let (out, summary, _) = replay(Arc::new(cfg), &events);
    assert_eq!((summary.skipped, summary.counters.too_far_ahead), (0, 1));
    let text = String::from_utf8_lossy(&out);
    let d = text.lines().find(|l| l.contains("from-the-future")).expect("decided");
    let v: serde_json::Value = serde_json::from_str(d).expect("json");
    assert_eq!(v["ts"], before.to_string(), "decided at the latest event time, not in 2099");
}

#[test]
fn a_synchronous_decide_never_moves_the_pipelines_time() {
    let cfg = support::default_config();
    let mut t = Topology::new(cfg);
    let mut out = Vec::new();
    let start = Surge::default().start;
    let failure = |i: i64| {
        InputEvent::Outcome(OutcomeEvent {
            ts: start.plus_ms(i * 100),
            dependency: "ai_primary".into(),
            ok: false,
            error: Some(surgeguard::wire::events::ErrorClass::ServerError),
            latency_ms: 100.0,
            request_id: None,
        })
    };
    // Enough failures to open the ai_primary breaker.
    for i in 0..50 {
        t.process(failure(i), &mut out);
    }
    let time = t.watermark();
    let open = |t: &Topology| t.breakers_now().into_iter().find(|b| &*b.dependency == "ai_primary").map(|b| b.state.as_str());
    assert_eq!(open(&t), Some("open"));
    out.clear();
    // A decide stamped four minutes on (past the breaker's recovery timeout): decided at its
    // time, and nothing else moves.
    let req = RequestEvent {
        id: "sync-1".into(),
        ts: start.plus_ms(4 * 60_000),
        user_id: "u1".into(),
        tier: "free".into(),
        request_type: "standard".into(),
        cost: 1,
    };
    t.decide(0, req, &mut out);
    assert_eq!(t.watermark(), time, "the pipeline's time is where the stream left it");
    assert_eq!(open(&t), Some("open"), "no timer fired");
    assert!(matches!(out.as_slice(), [Output::Decision(d)] if d.ts == start.plus_ms(4 * 60_000)), "{out:?}");
}

/// Requests partitions do not wait for each other, so one can be read far behind another (a
/// backlog, a partition just taken over). Its users are forgotten as idle at its own time, not
/// at the other's: a user who used up the quota is still throttled when their partition catches
/// up, although another partition ran two hours ahead meanwhile. Once it has nothing left to
/// read, its idle users go at the pipeline's time.
#[test]
fn a_partition_read_behind_keeps_its_users_until_its_own_time_passes() {
    use surgeguard::core::topology::Counted;
    use surgeguard::wire::events::InputTopic;
    use surgeguard::wire::outputs::DecisionKind;
    let mut t = Topology::new(support::default_config());
    let mut out = Vec::new();
    let start = Surge::default().start;
    let request = |i: usize, user: &str, ts: Millis| {
        InputEvent::Request(RequestEvent {
            id: format!("{user}-{i}").into(),
            ts,
            user_id: user.into(),
            tier: "free".into(),
            request_type: "standard".into(),
            cost: 1,
        })
    };
    let mut decide = |t: &mut Topology, partition: i32, e: InputEvent| {
        out.clear();
        t.process_from((InputTopic::Requests, partition), e, Counted::No, &mut out).expect("admitted");
        out.iter().find_map(|o| match o {
            Output::Decision(d) => Some(d.decision),
            _ => None,
        })
    };
    // User b, on partition 1, uses up the quota (and the grace) at the start.
    let mut i = 0;
    while decide(&mut t, 1, request(i, "b", start)) != Some(DecisionKind::Throttle) {
        i += 1;
        assert!(i < 100_000, "never throttled");
    }
    // Partition 0 runs two hours ahead, a minute at a time (sweeps run as time passes), its
    // time moving within the skew.
    for m in 1..=120 {
        decide(&mut t, 0, request(m, "a", start.plus_ms(m as i64 * 60_000)));
    }
    let tracked = t.tracked_users();
    // Partition 1 catches up: b's next request, a second later in b's time, is still over.
    assert_eq!(decide(&mut t, 1, request(i + 1, "b", start.plus_ms(1_000))), Some(DecisionKind::Throttle), "b was forgotten at partition 0's time");
    // Once partition 1 has nothing left to read it is not behind: at the next sweeps b, idle for
    // two hours of the pipeline's time, is forgotten.
    assert_eq!(t.tracked_users(), tracked);
    t.requests_caught_up(1);
    for m in 121..=125 {
        decide(&mut t, 0, request(m, "a", start.plus_ms(m as i64 * 60_000)));
    }
    assert_eq!(t.tracked_users(), tracked - 1, "a caught-up partition's idle user is swept at the pipeline's time");
}
