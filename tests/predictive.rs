//! Predictive limits in a replay (issue 4): a model fitted on 30 days of history that knows a
//! planned campaign cuts the limits before the campaign's surge arrives, and raises the proactive
//! alert; on a flat day nothing is cut. The model file and the seed history are read as the
//! pipeline's `[prediction]` section names them, through `surgeguard replay` and the library's
//! replay alike. Each `[prediction]` key, and the alert rule's, changes the replay.

mod support;

use std::process::Command;

use serde_json::Value;
use support::Scratch;
use surgeguard::forecast::features::{EventSpan, FeatureSpec, Transform};
use surgeguard::forecast::model::{Family, FitOptions, fit};
use surgeguard::forecast::rng::SplitMix64;
use surgeguard::forecast::series::Series;
use surgeguard::wire::events::{InputEvent, RequestEvent};
use surgeguard::wire::time::Millis;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const STEP: i64 = 5 * 60_000;
/// 2026-01-05T00:00:00Z, a Monday.
const T0: i64 = 1_767_571_200_000;

fn campaign(day: i64) -> EventSpan {
    EventSpan { start: Millis(T0 + day * DAY + 12 * HOUR), end: Millis(T0 + day * DAY + 13 * HOUR), label: "campaign".into() }
}

/// The campaigns of the history: every third day from day 1, at 12:00 for an hour.
fn past_campaigns(days: i64) -> Vec<EventSpan> {
    (1..days).step_by(3).map(campaign).collect()
}

/// Requests per 5 minutes: about 100, six times that during a campaign.
fn history(days: i64, campaigns: &[EventSpan]) -> Series {
    let mut rng = SplitMix64::new(9);
    let values = (0..days * 288)
        .map(|i| {
            let t = Millis(T0 + i * STEP);
            let base = (100.0 + 20.0 * (rng.unit() - 0.5)).round();
            if campaigns.iter().any(|e| e.start <= t && t < e.end) { base * 6.0 } else { base }
        })
        .collect();
    Series { start: Millis(T0), step_ms: STEP, values }
}

/// Fits on the first 30 days; `events` are the campaigns the model knows (past and planned).
fn model_json(events: &[EventSpan]) -> String {
    let mut spec = FeatureSpec::for_resolution(STEP, events, Transform::Log1p);
    spec.weekly_harmonics = 0;
    spec.lags = vec![1, 288];
    let mut o = FitOptions::new(Family::Poisson, 12);
    o.spec = Some(spec);
    fit(&history(30, events), events, &o).expect("fit").to_json()
}

/// The requests of day 31: `n(step)` per 5-minute step, spread over the step and 500 users.
fn day_31(n: impl Fn(Millis) -> u32) -> Vec<u8> {
    support::jsonl(&requests_of_day_31(288, n).into_iter().map(InputEvent::Request).collect::<Vec<_>>())
}

/// The first `steps` 5-minute steps of day 31, `n(step)` requests in each.
fn requests_of_day_31(steps: i64, n: impl Fn(Millis) -> u32) -> Vec<RequestEvent> {
    let mut events = Vec::new();
    for s in 0..steps {
        let start = Millis(T0 + 31 * DAY + s * STEP);
        let count = n(start);
        for k in 0..count {
            events.push(RequestEvent {
                id: format!("r{s}-{k}").into(),
                ts: Millis(start.0 + i64::from(k) * STEP / i64::from(count)),
                user_id: format!("u{}", k % 500).into(),
                tier: "enterprise".into(),
                request_type: "standard".into(),
                cost: 1,
            });
        }
    }
    events
}

struct Case {
    dir: Scratch,
    input: Vec<u8>,
}

impl Case {
    /// A model and seed history in a scratch dir, and day 31's requests: with the planned
    /// campaign (the model knows it, and the stream surges) or flat (neither).
    fn new(planned: bool) -> Self {
        let dir = Scratch::new(if planned { "predictive-surge" } else { "predictive-flat" });
        let mut known = past_campaigns(30);
        if planned {
            known.push(campaign(31));
        }
        dir.write("model.json", &model_json(&known));
        // The seed history: the 31 days before the replay (day 30 is quiet).
        let h = history(31, &past_campaigns(30));
        let mut csv = String::from("ts,value\n");
        for (i, v) in h.values.iter().enumerate() {
            csv.push_str(&format!("{},{v}\n", h.time_of(i)));
        }
        dir.write("history.csv", &csv);
        let surge = campaign(31);
        let input = day_31(|t| if planned && surge.start <= t && t < surge.end { 600 } else { 100 });
        Case { dir, input }
    }

    /// Multiplies the model's calibration scores of the horizon mean by `k`.
    fn widen_intervals(&self, k: f64) {
        let path = self.dir.path("model.json");
        let mut m = surgeguard::forecast::model::DemandModel::from_json(&std::fs::read_to_string(&path).expect("model")).expect("model parses");
        for q in &mut m.intervals.horizon_mean.0 {
            *q *= k;
        }
        std::fs::write(&path, m.to_json()).expect("write model");
    }

    fn pipeline(&self, extra: &str) -> String {
        format!(
            "[prediction]\nmodel = {:?}\nhistory = {:?}\nhistory_kind = \"series\"\n{extra}\n",
            self.dir.path("model.json").to_string_lossy(),
            self.dir.path("history.csv").to_string_lossy()
        )
    }

    /// `extra` is appended to the pipeline; `__EVENTS__` reads the history as events instead.
    fn replay(&self, extra: &str) -> Vec<Value> {
        let text = match extra {
            "__EVENTS__" => self.pipeline("").replace("history_kind = \"series\"", "history_kind = \"events\""),
            _ => self.pipeline(extra),
        };
        let cfg = surgeguard::config::load::load_str(&text, "predictive.toml").unwrap_or_else(|e| panic!("{e}"));
        let (out, _) = support::run(std::sync::Arc::new(cfg), &self.input);
        lines(&out)
    }
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out).lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

fn ts(v: &Value) -> Millis {
    let s = v["ts"].as_str().expect("ts");
    Millis(chrono::DateTime::parse_from_rfc3339(s).expect("rfc3339").timestamp_millis())
}

fn of<'a>(out: &'a [Value], topic: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    out.iter().filter(move |v| v["topic"] == topic)
}

fn predicted_multiplier(l: &Value) -> f64 {
    l["multipliers"]["predicted"].as_f64().expect("predicted multiplier")
}

#[test]
fn the_cut_comes_before_a_planned_surge_through_the_cli() {
    let case = Case::new(true);
    let config = case.dir.write("pipeline.toml", &case.pipeline(""));
    let input = case.dir.path("in.jsonl");
    std::fs::write(&input, &case.input).expect("write input");
    let out = case.dir.path("out.jsonl");
    let res = Command::new(support::bin()).args(["replay", "--config", &config]).arg(&input).arg("--out").arg(&out).output().expect("run surgeguard");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let out = lines(&std::fs::read(&out).expect("output"));
    let surge = campaign(31);

    // The first cut: before the surge's first request, within the hour before it.
    let cut = of(&out, "limits").find(|l| predicted_multiplier(l) < 1.0).expect("a predictive cut");
    let at = ts(cut);
    assert!(at < surge.start && at.0 >= surge.start.0 - HOUR, "cut at {at}, surge at {}", surge.start);
    assert!(predicted_multiplier(cut) < 0.5, "{cut}");
    assert!(cut["reason"].as_str().unwrap_or("").contains("predicted"), "{cut}");
    // The proactive alert comes with it.
    let alert = of(&out, "alerts").find(|a| a["rule"] == "predicted_spike").expect("the proactive alert");
    assert_eq!(ts(alert), at);
    assert_eq!(alert["severity"], "high");
    // The prediction that caused it: a spike, confidently.
    let p = of(&out, "predictions").find(|p| ts(p) == at).expect("the prediction at the cut");
    assert!(p["spike_factor"].as_f64().unwrap() > 2.0 && p["confidence"].as_f64().unwrap() > 0.8, "{p}");
    assert_eq!(p["scope"], "global");
    // Decisions after the cut are made against the lower limit.
    let limit_at = |t: Millis| of(&out, "decisions").find(|d| ts(d) >= t).map(|d| d["limit"].as_u64().expect("limit")).expect("a decision");
    assert!(limit_at(at) < limit_at(Millis(surge.start.0 - 3 * HOUR)));
    // The limits come back after the surge.
    let restored = of(&out, "limits").find(|l| ts(l) > surge.start && predicted_multiplier(l) == 1.0).expect("restored");
    assert!(ts(restored) <= Millis(surge.end.0 + HOUR), "restored at {}", ts(restored));
    // A seeded predictor forecasts from the first step of the day.
    assert!(of(&out, "predictions").count() >= 280);
}

#[test]
fn a_flat_day_is_never_cut() {
    let case = Case::new(false);
    let out = case.replay("");
    assert!(of(&out, "limits").all(|l| predicted_multiplier(l) == 1.0));
    assert!(of(&out, "alerts").all(|a| a["rule"] != "predicted_spike"));
    let preds: Vec<&Value> = of(&out, "predictions").collect();
    assert!(preds.len() >= 280, "{}", preds.len());
    for p in preds {
        let (lo, mid, hi) = (p["lower"].as_f64().unwrap(), p["predicted"].as_f64().unwrap(), p["upper"].as_f64().unwrap());
        assert!(lo <= mid && mid <= hi, "{p}");
        // 100 per 5 minutes is 20 per minute.
        assert!((mid / 20.0 - 1.0).abs() < 0.25, "{p}");
    }
    // The same file read as events: each `ts,value` row is one request, so the seed holds one
    // request per step and the first forecast's baseline (the last hour's mean) is far lower.
    let first = |extra: &str| {
        let out = case.replay(extra);
        of(&out, "predictions").next().map(|p| p["baseline"].as_f64().expect("baseline")).expect("a prediction")
    };
    let (series, events) = (first(""), first("__EVENTS__"));
    assert!(events < series / 2.0, "series {series}, events {events}");
}

#[test]
fn every_prediction_key_changes_the_replay() {
    let case = Case::new(true);
    let base = case.replay("");
    let cuts = |out: &[Value]| of(out, "limits").filter(|l| predicted_multiplier(l) < 1.0).count();
    assert!(cuts(&base) > 0);
    for (extra, what) in [
        ("scope = \"checkout\"", "the predictions' key"),
        ("coverage = 0.8", "the published interval"),
        ("spike_factor = 20.0", "no forecast is a 20× spike"),
        ("spike_factor = 1.5", "the cut starts earlier"),
        ("allowed_lateness_s = 0", "steps close, and forecasts are made, a minute earlier"),
        ("[alerts.predicted_spike]\nenabled = false\nseverity = \"high\"\ncooldown_s = 3600", "no proactive alert"),
        ("[alerts.predicted_spike]\nenabled = true\nseverity = \"critical\"\ncooldown_s = 3600", "the alert's severity"),
    ] {
        let out = case.replay(extra);
        assert!(out != base, "{extra}: the replay did not change ({what})");
    }
    let off = case.replay("spike_factor = 20.0");
    assert_eq!(cuts(&off), 0, "spike_factor 20 still cut");
    let no_alert = case.replay("[alerts.predicted_spike]\nenabled = false\nseverity = \"high\"\ncooldown_s = 3600");
    assert!(of(&no_alert, "alerts").all(|a| a["rule"] != "predicted_spike"));
    assert_eq!(cuts(&no_alert), cuts(&base), "the alert rule does not change the cut");
    // This series' noise is small beside a 6× campaign, so the confidence jumps from 0 to 1. With
    // the model's intervals widened 40×, it climbs through the values between, and a lower
    // min_confidence cuts earlier.
    case.widen_intervals(40.0);
    let first_cut = |out: &[Value]| of(out, "limits").find(|l| predicted_multiplier(l) < 1.0).map(ts);
    let (strict, lax) = (case.replay("min_confidence = 0.8"), case.replay("min_confidence = 0.2"));
    let confidences: Vec<f64> = of(&strict, "predictions").filter_map(|p| p["confidence"].as_f64()).filter(|c| *c > 0.0 && *c < 1.0).collect();
    assert!(!confidences.is_empty(), "no confidence strictly between 0 and 1");
    match (first_cut(&strict), first_cut(&lax)) {
        (Some(s), Some(l)) => assert!(l < s, "min_confidence 0.2 cut at {l}, 0.8 at {s}"),
        (None, Some(_)) => {}
        other => panic!("expected the lax threshold to cut first: {other:?}"),
    }
}

#[test]
fn a_missing_or_bad_model_fails_start_up_naming_the_key() {
    let dir = Scratch::new("predictive-bad");
    let input = dir.write("in.jsonl", "");
    for (name, model, expect) in [
        ("missing.toml", dir.path("nope.json").to_string_lossy().to_string(), "No such file"),
        ("bad.toml", dir.write("bad.json", "{\"format\":\"something else\",\"format_version\":1}"), "not a surgeguard demand model"),
    ] {
        let config = dir.write(name, &format!("[prediction]\nmodel = {model:?}\n"));
        let res = Command::new(support::bin()).args(["replay", "--config", &config, &input]).output().expect("run surgeguard");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{name} was accepted");
        assert!(stderr.contains("prediction.model") && stderr.contains(expect), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A history without a model is refused by the config check itself.
    let config = dir.write("history-only.toml", "[prediction]\nhistory = \"h.csv\"\n");
    let res = Command::new(support::bin()).args(["check-config", &config]).output().expect("run surgeguard");
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("prediction.history"));
}

/// `surgeguard run` on the mock cluster with the same model: predictions, the cut and the
/// proactive alert reach their topics. The requests go to six partitions, read in batches, so
/// event time is not in order across them; a late request counts in the step open when it
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_publishes_predictions_the_cut_and_the_alert() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::time::{Duration, Instant};

    let case = Case::new(true);
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut cfg = surgeguard::config::load::load_str(&case.pipeline(""), "predictive.toml").unwrap_or_else(|e| panic!("{e}"));
    cfg.kafka.create_topics = false;
    cfg.kafka.group_id = "predictive".into();
    cfg.api.listen = "127.0.0.1:0".into();
    cfg.kafka.wall_clock_after_idle_ms = 0;
    for spec in surgeguard::kafka::topics::specs(&cfg) {
        cluster.create_topic(&spec.name, spec.partitions, 1).expect("create topic");
    }
    let cfg = std::sync::Arc::new(cfg);
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
    // Day 31 from midnight to 12:30: the campaign starts at 12:00.
    let surge = campaign(31);
    let requests = requests_of_day_31(150, |t| if surge.start <= t && t < surge.end { 600 } else { 100 });
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "5").create().expect("producer");
    let mut pending = Vec::new();
    for r in &requests {
        let value = serde_json::to_vec(r).expect("encodable");
        let record = FutureRecord::to(&cfg.topics.requests).key(r.user_id.as_str()).payload(&value);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueued"));
    }
    for p in pending {
        p.await.expect("delivery report").map_err(|(e, _)| e).expect("produced");
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "predictive-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let t = &cfg.topics;
    consumer.subscribe(&[&t.predictions, &t.limits, &t.alerts, &t.decisions]).expect("subscribe");
    let (mut predictions, mut cut, mut alert, mut decisions) = (0usize, None, None, 0usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    // Until every decision, the cut, the alert and the day's predictions (one per 5 minutes
    // after the first) have been read, or the deadline.
    while (decisions < requests.len() || alert.is_none() || cut.is_none() || predictions < 140) && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else { continue };
        let v: Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).expect("JSON");
        match m.topic() {
            x if x == t.predictions => predictions += 1,
            x if x == t.limits && cut.is_none() && predicted_multiplier(&v) < 1.0 => cut = Some(ts(&v)),
            x if x == t.alerts && v["rule"] == "predicted_spike" => alert = Some(ts(&v)),
            x if x == t.decisions => decisions += 1,
            _ => {}
        }
    }
    stop.send(()).ok();
    let stats = service.await.expect("service task").expect("service stopped cleanly");
    assert_eq!(stats.consumed, requests.len() as u64);
    assert_eq!(decisions, requests.len());
    assert!(predictions >= 140, "{predictions} predictions");
    let cut = cut.expect("a predictive cut on the limits topic");
    assert!(cut < surge.start && cut.0 >= surge.start.0 - HOUR, "cut at {cut}");
    assert_eq!(alert, Some(cut), "the proactive alert comes with the cut");
}

/// `whatif` with the predictive policy on day 31's requests as Parquet history: the cut shows in
/// its report. A seed history that runs past the replayed requests (it covers day 31 too) gives
/// the same report: only its steps before the first request are used.
#[test]
fn whatif_tries_the_predictive_policy_on_history() {
    let case = Case::new(true);
    let dir = case.dir.path("requests");
    let mut w = surgeguard::history::parquet::HistoryWriter::new(&dir, "day-31");
    let surge = campaign(31);
    for r in requests_of_day_31(288, |t| if surge.start <= t && t < surge.end { 600 } else { 100 }) {
        w.write(&r).expect("write");
    }
    w.finish().expect("finish");
    let run = |pipeline: &str, name: &str| -> Value {
        let config = case.dir.write(name, pipeline);
        let report = case.dir.path(&format!("{name}.json"));
        let res = Command::new(support::bin())
            .args(["whatif", "--history", &dir.to_string_lossy(), "--config", &config, "--out", &report.to_string_lossy()])
            .output()
            .expect("run surgeguard");
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json")
    };
    let with = run(&case.pipeline(""), "predictive.toml");
    let p = &with["policies"][0];
    assert!(p["predictions"].as_u64().unwrap() >= 280, "{p}");
    assert!(p["predictive_cut_updates"].as_u64().unwrap() > 0, "{p}");
    assert!(p["alerts"]["predicted_spike"].as_u64() == Some(1), "{p}");
    // A seed that overlaps the replayed day.
    let h = history(32, &past_campaigns(30));
    let mut csv = String::from("ts,value\n");
    for (i, v) in h.values.iter().enumerate() {
        csv.push_str(&format!("{},{v}\n", h.time_of(i)));
    }
    let longer = case.dir.write("history-32.csv", &csv);
    let overlapping = case.pipeline("").replace(&case.dir.path("history.csv").to_string_lossy().to_string(), &longer);
    let mut same = run(&overlapping, "overlapping.toml");
    same["policies"][0]["name"] = with["policies"][0]["name"].clone();
    assert_eq!(same["policies"][0], with["policies"][0]);
    // Without a model: no predictions, no cut.
    let plain = run("", "plain.toml");
    assert_eq!(plain["policies"][0]["predictions"].as_u64(), Some(0));
    assert_eq!(plain["policies"][0]["predictive_cut_updates"].as_u64(), Some(0));
}
