//! The service's Prometheus metrics: counters the shell moves as it works (events in, outputs
//! out, decisions, dead letters, processing time), and gauges read from the topology when
//! `/metrics` is scraped (breaker states, adjusted limits, the latest predictions and their
//! errors), and the consumer lag from librdkafka's statistics.

use prometheus::{Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::config::Config;
use crate::kafka::shared::Shared;
use crate::wire::outputs::{BreakerStateKind, DecisionKind, Output};

pub struct Metrics {
    registry: Registry,
    events_in: IntCounterVec,
    decisions: IntCounterVec,
    pub dead_lettered: IntCounter,
    /// Outputs the producer or the broker refused for their size, sent to the DLQ instead.
    pub outputs_refused: IntCounter,
    /// Times the pipeline started again in the process after an error.
    pub restarts: IntCounter,
    /// Inputs sent to the DLQ as `quarantined` after their outputs failed again and again.
    pub quarantined: IntCounter,
    /// `POST /v1/decide` answers repeated for a request id decided before.
    pub api_replayed: IntCounter,
    pub processing_seconds: Histogram,
    pub ready: IntGauge,
    /// `outputs` per output kind, and `decisions` per configured tier and decision kind, looked
    /// up once (a labelled lookup hashes the labels and takes a lock, per message).
    outputs_by_kind: Vec<IntCounter>,
    decisions_by_tier: Vec<(String, [IntCounter; 3])>,
    events_in_by_topic: Vec<(String, IntCounter)>,
    breaker_state: IntGaugeVec,
    adjusted_rpm: GaugeVec,
    predicted_rpm: GaugeVec,
    spike_factor: GaugeVec,
    consumer_lag: IntGaugeVec,
    prediction_error: GaugeVec,
    prediction_mae: GaugeVec,
    late_events: IntCounter,
    /// Messages processed after an input's idle wait ran out with that input behind them.
    pub control_behind: IntCounter,
    too_far_ahead: IntCounter,
    event_time: IntGauge,
    input_watermark: IntGauge,
    tracked_users: IntGauge,
    /// Entries of each table keyed by input (`table_entries{table}`), and what caps did.
    table_entries: IntGaugeVec,
    idempotency_bytes: IntGauge,
    users_displaced: IntCounter,
    breaker_outcomes_refused: IntCounter,
    learned_dependencies_dropped: IntCounter,
    health_sources_displaced: IntCounter,
    /// Per input topic, how far its furthest-behind partition is behind the latest event time.
    input_behind: GaugeVec,
    /// Requests processed again whose first decision was found in the decisions topic.
    pub decided_before: IntCounter,
    /// First decisions read back and still waiting for their requests (set every second).
    pub first_decisions_held: IntGauge,
    pub usage_records: IntGauge,
    pub usage_late: IntGauge,
    pub usage_closed_to: IntGauge,
}

/// Registers `c` with `registry` and hands it back.
fn reg<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> Result<C, prometheus::Error> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn decision_label(k: DecisionKind) -> &'static str {
    match k {
        DecisionKind::Allow => "allow",
        DecisionKind::AllowWithGrace => "allow_with_grace",
        DecisionKind::Throttle => "throttle",
    }
}

impl Metrics {
    /// The metrics of a service run with `cfg` (its tiers and input topics are looked up once).
    pub fn new(cfg: &Config) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("surgeguard".into()), None)?;
        let events_in = reg(&registry, IntCounterVec::new(Opts::new("events_in_total", "Input messages consumed, by topic"), &["topic"])?)?;
        let outputs = reg(
            &registry,
            IntCounterVec::new(Opts::new("outputs_total", "Output records produced, by kind (decisions, limits, breakers, predictions, alerts)"), &["kind"])?,
        )?;
        let decisions = reg(&registry, IntCounterVec::new(Opts::new("decisions_total", "Decisions, by decision and tier"), &["decision", "tier"])?)?;
        let dead_lettered = reg(&registry, IntCounter::new("dlq_messages_total", "Input messages sent to the DLQ")?)?;
        let outputs_refused = reg(
            &registry,
            IntCounter::new("outputs_refused_total", "Output records refused for good (too large for message.max.bytes): sent to the DLQ instead")?,
        )?;
        let restarts = reg(
            &registry,
            IntCounter::new(
                "restarts_total",
                "Times the pipeline started again in the process after a client, broker or rebalance failure (new clients, state restored as after a crash)",
            )?,
        )?;
        let quarantined = reg(
            &registry,
            IntCounter::new("quarantined_total", "Inputs sent to the DLQ as quarantined: their outputs failed kafka.quarantine_after restarts in a row")?,
        )?;
        let api_replayed = reg(
            &registry,
            IntCounter::new("api_decisions_replayed_total", "POST /v1/decide answers repeated for a request id decided before (not counted again)")?,
        )?;
        let processing_seconds = reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "processing_seconds",
                    "Time to process one decoded input message and enqueue its outputs, waits for producer queue space included",
                )
                .buckets(vec![0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            )?,
        )?;
        let ready = reg(&registry, IntGauge::new("ready", "1 once the instance has its partitions and their state")?)?;
        let breaker_state =
            reg(&registry, IntGaugeVec::new(Opts::new("breaker_state", "1 for each dependency's current breaker state"), &["dependency", "state"])?)?;
        let adjusted_rpm = reg(
            &registry,
            GaugeVec::new(Opts::new("limit_adjusted_requests_per_minute", "The adjusted limit per tier and request type"), &["tier", "request_type"])?,
        )?;
        let predicted_rpm =
            reg(&registry, GaugeVec::new(Opts::new("predicted_requests_per_minute", "The latest forecast mean demand per scope"), &["scope"])?)?;
        let spike_factor = reg(&registry, GaugeVec::new(Opts::new("predicted_spike_factor", "The latest forecast's spike factor per scope"), &["scope"])?)?;
        let consumer_lag = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "consumer_lag_messages",
                    "Messages behind the end of each requests partition this instance owns (librdkafka's statistics, every 5 s)",
                ),
                &["topic", "partition"],
            )?,
        )?;
        let prediction_error = reg(
            &registry,
            GaugeVec::new(
                Opts::new("prediction_error_requests_per_minute", "Actual minus predicted demand of the latest step a one-step-ahead forecast covered"),
                &["scope"],
            )?,
        )?;
        let prediction_mae = reg(
            &registry,
            GaugeVec::new(Opts::new("prediction_mean_absolute_error_requests_per_minute", "Mean absolute one-step-ahead error since start"), &["scope"])?,
        )?;
        let late_events = reg(
            &registry,
            IntCounter::new("late_events_total", "Events more than event_time.allowed_lateness_s behind the watermark (processed, never moving time back)")?,
        )?;
        let too_far_ahead = reg(
            &registry,
            IntCounter::new(
                "too_far_ahead_events_total",
                "Events stamped more than event_time.max_future_skew_s ahead of the pipeline's time (dead-lettered or clamped)",
            )?,
        )?;
        let event_time = reg(&registry, IntGauge::new("event_time_seconds", "The pipeline's event time: the latest event time processed (Unix seconds)")?)?;
        let input_watermark = reg(
            &registry,
            IntGauge::new(
                "input_watermark_seconds",
                "The lowest event time of the input partitions read so far (Unix seconds); event_time_seconds minus this is how far inputs are apart",
            )?,
        )?;
        let control_behind = reg(
            &registry,
            IntCounter::new(
                "aligned_after_idle_wait_total",
                "Messages processed after waiting kafka.max_idle_ms for an input partition with nothing to read whose event time was behind them",
            )?,
        )?;
        let tracked_users = reg(&registry, IntGauge::new("tracked_users", "Users with limiter state in the requests partitions this instance owns")?)?;
        let table_entries = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "table_entries",
                    "Entries of each table keyed by input: limiter_keys, breakers, learned_dependencies, telemetry_sources, idempotency_decisions, quarantine (each has a cap: docs/operations.md)",
                ),
                &["table"],
            )?,
        )?;
        let idempotency_bytes =
            reg(&registry, IntGauge::new("idempotency_bytes", "Bytes the decisions remembered for POST /v1/decide's idempotency take (estimated)")?)?;
        let users_displaced = reg(
            &registry,
            IntCounter::new(
                "users_displaced_total",
                "Limiter keys dropped at limiter.max_keys_per_partition to make room for new ones (their users start afresh)",
            )?,
        )?;
        let breaker_outcomes_refused = reg(
            &registry,
            IntCounter::new("breaker_outcomes_refused_total", "Outcomes naming a new dependency not tracked: learned_dependencies.max reached")?,
        )?;
        let learned_dependencies_dropped = reg(
            &registry,
            IntCounter::new(
                "learned_dependencies_dropped_total",
                "Learned dependencies dropped after learned_dependencies.evict_idle_after_s without outcomes",
            )?,
        )?;
        let health_sources_displaced =
            reg(&registry, IntCounter::new("health_sources_displaced_total", "Telemetry sources displaced by a new one at health.max_sources")?)?;
        let input_behind = reg(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "input_behind_seconds",
                    "Per input topic, how far its furthest-behind partition is behind the latest event time taken (event-time skew)",
                ),
                &["topic"],
            )?,
        )?;
        let decided_before = reg(
            &registry,
            IntCounter::new(
                "decided_before_total",
                "Requests processed again after a crash or rebalance whose first decision was read back from the decisions topic (decided as then, not published again)",
            )?,
        )?;
        let first_decisions_held = reg(
            &registry,
            IntGauge::new("first_decisions_held", "First decisions read back from the decisions topic whose requests have not come again yet")?,
        )?;
        let usage_records =
            reg(&registry, IntGauge::new("usage_records_read", "Usage records read from the usage topic (every owner's, this instance's own included)")?)?;
        let usage_late = reg(
            &registry,
            IntGauge::new(
                "usage_late",
                "Decisions counted in a later minute than their own (their partition was past it), and usage cells that came after their minute closed",
            )?,
        )?;
        let usage_closed_to = reg(
            &registry,
            IntGauge::new(
                "usage_closed_to_seconds",
                "Event time (Unix seconds) up to which every requests partition's decisions are folded: the monitor's and the predictor's time",
            )?,
        )?;
        let outputs_by_kind = Output::TOPICS.iter().map(|k| outputs.with_label_values(&[*k])).collect();
        let decisions_by_tier =
            cfg.tiers.keys().map(|t| (t.clone(), DecisionKind::ALL.map(|k| decisions.with_label_values(&[decision_label(k), t])))).collect();
        let t = &cfg.topics;
        let events_in_by_topic = crate::wire::events::InputTopic::ALL
            .into_iter()
            .map(|k| t.name(k))
            .map(|topic| (topic.to_string(), events_in.with_label_values(&[topic])))
            .collect();
        Ok(Metrics {
            registry,
            events_in,
            decisions,
            dead_lettered,
            outputs_refused,
            restarts,
            quarantined,
            api_replayed,
            processing_seconds,
            ready,
            outputs_by_kind,
            decisions_by_tier,
            events_in_by_topic,
            breaker_state,
            adjusted_rpm,
            predicted_rpm,
            spike_factor,
            consumer_lag,
            prediction_error,
            prediction_mae,
            late_events,
            control_behind,
            too_far_ahead,
            event_time,
            input_watermark,
            tracked_users,
            table_entries,
            idempotency_bytes,
            users_displaced,
            breaker_outcomes_refused,
            learned_dependencies_dropped,
            health_sources_displaced,
            input_behind,
            decided_before,
            first_decisions_held,
            usage_records,
            usage_late,
            usage_closed_to,
        })
    }

    /// The lag of each assigned partition from librdkafka's statistics (partitions no longer
    /// assigned disappear).
    pub fn set_consumer_lag(&self, stats: &rdkafka::Statistics) {
        self.consumer_lag.reset();
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's internal unassigned partition; a lag of -1 is unknown.
                if *p >= 0 && part.desired && part.consumer_lag >= 0 {
                    self.consumer_lag.with_label_values(&[topic.as_str(), &p.to_string()]).set(part.consumer_lag);
                }
            }
        }
    }

    /// Counts one input message of `topic`.
    pub fn count_in(&self, topic: &str) {
        match self.events_in_by_topic.iter().find(|(t, _)| t == topic) {
            Some((_, c)) => c.inc(),
            None => self.events_in.with_label_values(&[topic]).inc(),
        }
    }

    /// Counts the outputs of one message that this instance produces (a follower has dropped
    /// the control side's by then).
    pub fn count_outputs(&self, outs: &[Output]) {
        for o in outs {
            self.outputs_by_kind[o.kind()].inc();
            if let Output::Decision(d) = o {
                match self.decisions_by_tier.iter().find(|(t, _)| *t == *d.tier) {
                    Some((_, by_kind)) => by_kind[d.decision as usize].inc(),
                    None => self.decisions.with_label_values(&[decision_label(d.decision), &*d.tier]).inc(),
                }
            }
        }
    }

    /// The size of a table the topology does not hold (`quarantine`).
    pub fn set_table_entries(&self, table: &str, n: usize) {
        self.table_entries.with_label_values(&[table]).set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The tables keyed by input: their sizes, and what their caps did.
    fn tables(&self, sh: &Shared) {
        let t = &sh.topology;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let catch_up = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        let (breakers, learned, refused, dropped) = t.breaker_counts();
        let (sources, displaced) = t.health_sources();
        for (table, n) in [
            ("limiter_keys", t.tracked_users()),
            ("breakers", breakers),
            ("learned_dependencies", learned),
            ("telemetry_sources", sources),
            ("idempotency_decisions", sh.api_recent.len()),
        ] {
            self.table_entries.with_label_values(&[table]).set(gauge(n));
        }
        self.idempotency_bytes.set(gauge(sh.api_recent.bytes()));
        catch_up(&self.users_displaced, t.displaced_users());
        catch_up(&self.breaker_outcomes_refused, refused);
        catch_up(&self.learned_dependencies_dropped, dropped);
        catch_up(&self.health_sources_displaced, displaced);
        for (topic, behind) in t.input_skew() {
            if let Some(ms) = behind {
                self.input_behind.with_label_values(&[topic.name()]).set(ms as f64 / 1000.0);
            }
        }
    }

    /// The content type of `render`'s text.
    pub fn content_type(&self) -> String {
        TextEncoder::new().format_type().to_string()
    }

    /// The text exposition, with the gauges read from `topology` now (breaker states only for
    /// the configured dependencies: an outcome may name any dependency, and each name would
    /// be six series that never go away).
    pub fn render(&self, shared: Option<&Shared>) -> String {
        if let Some(sh) = shared {
            let t = &sh.topology;
            for b in t.breakers_now().into_iter().filter(|b| t.is_upstream(&b.dependency)) {
                for s in BreakerStateKind::ALL {
                    self.breaker_state.with_label_values(&[&*b.dependency, s.as_str()]).set(i64::from(b.state == s));
                }
            }
            for l in t.limits_now() {
                let (tier, request_type) = l.key.split_once('/').unwrap_or((&l.key, ""));
                self.adjusted_rpm.with_label_values(&[tier, request_type]).set(f64::from(l.adjusted_rpm));
            }
            for p in t.latest_predictions() {
                self.predicted_rpm.with_label_values(&[&p.scope]).set(p.predicted);
                self.spike_factor.with_label_values(&[&p.scope]).set(p.spike_factor);
            }
            for (scope, e) in t.prediction_errors() {
                self.prediction_error.with_label_values(&[scope]).set(e.last);
                self.prediction_mae.with_label_values(&[scope]).set(e.mean_absolute());
            }
            // The topology's counters only grow: the counters catch up with them.
            let c = t.counters();
            self.late_events.inc_by(c.late.saturating_sub(self.late_events.get()));
            self.too_far_ahead.inc_by(c.too_far_ahead.saturating_sub(self.too_far_ahead.get()));
            if let Some(w) = t.watermark() {
                self.event_time.set(w.0.div_euclid(1000));
            }
            if let (Some(w), _) = t.input_watermark() {
                self.input_watermark.set(w.0.div_euclid(1000));
            }
            self.tracked_users.set(i64::try_from(t.tracked_users()).unwrap_or(i64::MAX));
            self.tables(sh);
        }
        let mut buf = Vec::new();
        // Encoding into memory fails only on a metric the encoder cannot write; say so in the body.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(tier: &str, kind: DecisionKind) -> Output {
        let mut d = crate::wire::outputs::test_decision(crate::wire::time::Millis(0), kind);
        d.tier = tier.into();
        Output::Decision(d)
    }

    /// The counters looked up once count the same series as a labelled lookup would, and names
    /// outside the config still get theirs.
    #[test]
    fn counts_by_topic_kind_and_tier() {
        let cfg = Config::default();
        let m = Metrics::new(&cfg).expect("metrics");
        m.count_in(&cfg.topics.requests);
        m.count_in(&cfg.topics.requests);
        m.count_in("somewhere.else");
        let outs = [
            decision("pro", DecisionKind::Allow),
            decision("pro", DecisionKind::Throttle),
            decision("pro", DecisionKind::Throttle),
            decision("nobody", DecisionKind::AllowWithGrace),
        ];
        m.count_outputs(&outs);
        let text = m.render(None);
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "no line `{line}` in\n{text}");
        has(&format!("surgeguard_events_in_total{{topic=\"{}\"}} 2", cfg.topics.requests));
        has("surgeguard_events_in_total{topic=\"somewhere.else\"} 1");
        has("surgeguard_outputs_total{kind=\"decisions\"} 4");
        has("surgeguard_outputs_total{kind=\"alerts\"} 0");
        has("surgeguard_decisions_total{decision=\"allow\",tier=\"pro\"} 1");
        has("surgeguard_decisions_total{decision=\"throttle\",tier=\"pro\"} 2");
        has("surgeguard_decisions_total{decision=\"allow_with_grace\",tier=\"pro\"} 0");
        has("surgeguard_decisions_total{decision=\"allow_with_grace\",tier=\"nobody\"} 1");
    }
}
