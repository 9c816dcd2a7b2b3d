//! Input alignment (issue 18): every input partition's messages wait in a buffer of their own,
//! and the pipeline takes the one with the lowest event time next, once every partition that may
//! still hold an earlier one has shown its next event or is excused. Requests partitions do not
//! wait for one another: a request waits for the control inputs (outcomes, telemetry, admin), a
//! control event for every input. This is Kafka Streams' task
//! with several inputs (`PartitionGroup`, `max.task.idle.ms`): a request at `t` is decided after
//! the telemetry, outcomes and admin actions before `t` were applied, however the consumers
//! happen to deliver them (a backlog after an outage, one topic read ahead of another), so
//! `run` decides as `replay` of the same events does.
//!
//! A partition whose buffer is empty and whose time is behind the next event holds it back
//! while:
//! - it has messages left to read (librdkafka's cached high watermark is past what it
//!   delivered): the pipeline waits for them, at most `STALL` without any;
//! - it has nothing to read: it may still get something stamped earlier (a producer a little
//!   behind), so the pipeline waits `kafka.max_idle_ms` from when it ran dry, then excuses it
//!   until its next message. The event that waited carries how far the excused partition's
//!   time was behind it (a header on its decisions) and is counted.
//!
//! Undecodable messages have no time: they go at once when they reach the head of their
//! partition (offsets stay in order). The buffers hold at most `MAX_BUFFERED` messages; when
//! full, the lowest head goes without waiting.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::Offset;

use crate::config::Config;
use crate::wire::decode::{self, DecodeError};
use crate::wire::events::{InputEvent, InputTopic};
use crate::wire::time::Millis;

/// The most messages held in the buffers together.
pub(crate) const MAX_BUFFERED: usize = 50_000;

/// The longest the pipeline waits for a partition that has messages left to read but delivers
/// none.
const STALL: Duration = Duration::from_secs(2);

/// Which consumer a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The group's consumer: a requests partition this instance owns.
    Requests,
    /// The control consumer: outcomes, telemetry, admin (every instance reads them all).
    Control,
}

/// One message taken off a consumer, decoded, waiting for its turn.
pub(crate) struct Buffered {
    pub offset: i64,
    pub key: Option<Box<[u8]>>,
    pub payload: Box<[u8]>,
    pub decoded: Result<InputEvent, DecodeError>,
}

impl Buffered {
    /// Its event time; none for an undecodable message.
    fn ts(&self) -> Option<Millis> {
        self.decoded.as_ref().ok().map(InputEvent::ts)
    }
}

/// The next message to process, with where it came from.
pub(crate) struct Ready {
    pub topic: String,
    pub partition: i32,
    pub source: Source,
    pub message: Buffered,
    /// This message waited `kafka.max_idle_ms` for a partition with nothing to read, whose time
    /// was this far behind it (-1: it had no event yet), and went on without it.
    pub behind_ms: Option<i64>,
}

/// What the merge can do now.
pub(crate) enum Next {
    Ready(Ready),
    /// A partition holds the next message back: read more, or come back at the deadline.
    Wait(Instant),
    /// Nothing is buffered.
    Empty,
}

struct Part {
    topic: String,
    c_topic: CString,
    partition: i32,
    source: Source,
    buf: VecDeque<Buffered>,
    /// The highest event time taken into the buffer.
    time: Option<Millis>,
    /// The offset after the last message taken in.
    next_offset: Option<i64>,
    /// When it was first seen with nothing to read and an empty buffer, since its last message.
    dry_since: Option<Instant>,
    /// When it was first seen holding back with messages left to read, since its last message.
    stalled_since: Option<Instant>,
    /// Excused until its next message.
    excused: bool,
}

/// The input partitions' buffers and the choice of the next message.
pub(crate) struct InputMerge {
    parts: Vec<Part>,
    index: HashMap<(InputTopic, i32), usize>,
    buffered: usize,
    max_idle: Duration,
    /// How far behind the partitions excused after their idle wait were, while another still
    /// held the message back: said with the message when it goes.
    pending_behind: Option<i64>,
}

impl InputMerge {
    pub(crate) fn new(cfg: &Config) -> Self {
        InputMerge {
            parts: Vec::new(),
            index: HashMap::new(),
            buffered: 0,
            max_idle: Duration::from_millis(u64::from(cfg.kafka.max_idle_ms)),
            pending_behind: None,
        }
    }

    /// Whether the buffers are full (the loop stops reading until they drain).
    pub(crate) fn full(&self) -> bool {
        self.buffered >= MAX_BUFFERED
    }

    /// A partition is read from now on, from `from` when known: until it shows an event, or is
    /// excused, it holds back every later one.
    pub(crate) fn assign(&mut self, cfg: &Config, topic: &str, partition: i32, source: Source, from: Option<i64>) {
        let Some(input) = cfg.topics.input_topic(topic) else { return };
        if self.index.contains_key(&(input, partition)) {
            return;
        }
        let Ok(c_topic) = CString::new(topic) else { return };
        self.index.insert((input, partition), self.parts.len());
        self.parts.push(Part {
            topic: topic.to_string(),
            c_topic,
            partition,
            source,
            buf: VecDeque::new(),
            time: None,
            next_offset: from,
            dry_since: None,
            stalled_since: None,
            excused: false,
        });
    }

    /// The requests partitions owned after a rebalance, and those revoked in it: the buffers of
    /// revoked ones go (their next owner, this instance again or another, reads them from the
    /// committed offset), the owned ones are assigned.
    /// `from`: where the group's consumer starts each newly owned partition (its committed
    /// offset), when known.
    pub(crate) fn own_requests(&mut self, cfg: &Config, owned: &[i32], revoked: &[i32], from: impl Fn(i32) -> Option<i64>) {
        let requests = cfg.topics.requests.as_str();
        let gone: Vec<usize> = self
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.source == Source::Requests && (!owned.contains(&p.partition) || revoked.contains(&p.partition)))
            .map(|(i, _)| i)
            .collect();
        if !gone.is_empty() {
            let mut kept = Vec::with_capacity(self.parts.len());
            for (i, p) in std::mem::take(&mut self.parts).into_iter().enumerate() {
                if gone.contains(&i) {
                    self.buffered -= p.buf.len();
                } else {
                    kept.push(p);
                }
            }
            self.parts = kept;
            self.index = self.parts.iter().enumerate().filter_map(|(i, p)| cfg.topics.input_topic(&p.topic).map(|t| ((t, p.partition), i))).collect();
        }
        for &p in owned {
            self.assign(cfg, requests, p, Source::Requests, from(p));
        }
    }

    /// The requests partitions with nothing buffered and nothing left to read (`left_to_read`
    /// says): caught up, not behind.
    pub(crate) fn caught_up_requests(&self, mut left_to_read: impl FnMut(&CString, i32, Option<i64>) -> bool) -> Vec<i32> {
        self.parts
            .iter()
            .filter(|p| p.source == Source::Requests && p.buf.is_empty() && !left_to_read(&p.c_topic, p.partition, p.next_offset))
            .map(|p| p.partition)
            .collect()
    }

    /// The requests partitions of `owned` it does not read yet.
    pub(crate) fn new_requests(&self, cfg: &Config, owned: &[i32]) -> Vec<i32> {
        let Some(t) = cfg.topics.input_topic(&cfg.topics.requests) else { return Vec::new() };
        owned.iter().copied().filter(|p| !self.index.contains_key(&(t, *p))).collect()
    }

    /// Takes in a message: decoded now, buffered until its turn.
    pub(crate) fn push(&mut self, cfg: &Config, m: &BorrowedMessage<'_>, source: Source) {
        let topic = m.topic();
        let input = cfg.topics.input_topic(topic);
        if let Some(t) = input {
            self.assign(cfg, topic, m.partition(), source, None);
            if let Some(&i) = self.index.get(&(t, m.partition())) {
                let payload = m.payload().unwrap_or(&[]);
                let decoded = decode::decode(t, payload, &cfg.limits);
                let b = Buffered { offset: m.offset(), key: m.key().map(Box::from), payload: Box::from(payload), decoded };
                let p = &mut self.parts[i];
                if let Some(ts) = b.ts() {
                    p.time = p.time.max(Some(ts));
                }
                p.next_offset = Some(m.offset() + 1);
                (p.dry_since, p.stalled_since, p.excused) = (None, None, false);
                p.buf.push_back(b);
                self.buffered += 1;
                return;
            }
        }
        tracing::warn!(topic, partition = m.partition(), "a message of a topic this pipeline does not read: skipped");
    }

    /// The next message to process, if every partition that could hold an earlier one has
    /// shown its next, or is excused. `left_to_read` says whether a partition has messages
    /// librdkafka has not delivered yet.
    pub(crate) fn next(&mut self, now: Instant, mut left_to_read: impl FnMut(Source, &CString, i32, Option<i64>) -> bool) -> Next {
        // The lowest head: undecodable heads (no time) first, then by time, requests before
        // control events at the same time (a decision at `t` uses what was known before `t`; a
        // sample stamped `t` did not exist yet when the request came).
        let mut best: Option<(usize, Option<Millis>)> = None;
        for (i, p) in self.parts.iter().enumerate() {
            let Some(head) = p.buf.front() else { continue };
            let key = |ts: Option<Millis>, source: Source| (ts.map(|t| t.0), source == Source::Control);
            let ts = head.ts();
            if best.is_none_or(|(j, bts)| key(ts, p.source) < key(bts, self.parts[j].source)) {
                best = Some((i, ts));
            }
        }
        let Some((bi, best_ts)) = best else { return Next::Empty };
        let best_is_request = self.parts[bi].source == Source::Requests;
        let mut behind_ms = None;
        if let Some(ts) = best_ts
            && !self.full()
        {
            let mut wait: Option<Instant> = None;
            let mut excused_now = self.pending_behind;
            for (i, p) in self.parts.iter_mut().enumerate() {
                // Requests partitions do not wait for each other (each user's requests are in
                // one partition; as in Kafka Streams, where each is a task of its own): a request
                // waits for the control inputs only, a control event for every input.
                if i == bi || !p.buf.is_empty() || p.excused || p.time.is_some_and(|t| t >= ts) || (best_is_request && p.source == Source::Requests) {
                    continue;
                }
                // Asked once per wait: a message for it ends the wait, and either wait is bounded.
                if p.stalled_since.is_none() && p.dry_since.is_none() {
                    if left_to_read(p.source, &p.c_topic, p.partition, p.next_offset) {
                        p.stalled_since = Some(now);
                    } else {
                        p.dry_since = Some(now);
                    }
                }
                if let Some(since) = p.stalled_since {
                    if now.duration_since(since) >= STALL {
                        tracing::warn!(topic = %p.topic, partition = p.partition, "a partition with messages left to read delivered none for {STALL:?}: going on without it");
                        p.excused = true;
                    } else {
                        wait = Some(wait.map_or(since + STALL, |w| w.min(since + STALL)));
                    }
                } else if let Some(since) = p.dry_since {
                    if now.duration_since(since) >= self.max_idle {
                        p.excused = true;
                        if !self.max_idle.is_zero() {
                            // -1: it has had no event at all yet.
                            let behind = p.time.map_or(-1, |t| ts.0.saturating_sub(t.0));
                            excused_now = Some(excused_now.map_or(behind, |b| b.max(behind)));
                        }
                    } else {
                        wait = Some(wait.map_or(since + self.max_idle, |w| w.min(since + self.max_idle)));
                    }
                }
            }
            self.pending_behind = excused_now;
            if let Some(w) = wait {
                return Next::Wait(w);
            }
            behind_ms = self.pending_behind.take();
        }
        let p = &mut self.parts[bi];
        let Some(message) = p.buf.pop_front() else { return Next::Empty };
        self.buffered -= 1;
        Next::Ready(Ready { topic: p.topic.clone(), partition: p.partition, source: p.source, message, behind_ms })
    }
}

/// Whether `consumer` has messages of `topic`/`partition` it has not delivered yet: its cached
/// high watermark (updated with every fetch response, no request to the broker; the last stable
/// offset under read_committed) is past both `next_offset` and its position. Unknown watermarks
/// count as nothing to read.
pub(crate) fn left_to_read<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &CString,
    partition: i32,
    next_offset: Option<i64>,
) -> bool {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, the topic is a
    // NUL-terminated string, and the out-pointers point to live locals.
    let err = unsafe { rdkafka::bindings::rd_kafka_get_watermark_offsets(consumer.client().native_ptr(), topic.as_ptr(), partition, &mut low, &mut high) };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
        return false;
    }
    if next_offset.is_some_and(|n| n >= high) {
        return false;
    }
    // The consumer's position also passes offsets it delivers no message for (transaction
    // markers).
    let position = match consumer.position().ok().and_then(|tpl| tpl.find_partition(&topic.to_string_lossy(), partition).map(|e| e.offset())) {
        Some(Offset::Offset(n)) => Some(n),
        _ => None,
    };
    // Nothing known: anything above the low watermark is there to read.
    let next = next_offset.max(position).unwrap_or(low.max(0));
    next < high
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::events::{RequestEvent, TelemetrySample};

    fn request(ts: i64) -> InputEvent {
        InputEvent::Request(RequestEvent {
            id: format!("r{ts}").into(),
            ts: Millis(ts),
            user_id: "u".into(),
            tier: "free".into(),
            request_type: "standard".into(),
            cost: 1,
        })
    }

    fn sample(ts: i64) -> InputEvent {
        InputEvent::Telemetry(TelemetrySample {
            ts: Millis(ts),
            source: "h".into(),
            cpu: 0.5,
            memory: 0.5,
            db_connections_in_use: 1,
            db_connections_max: 10,
            queue_depth: None,
            queue_capacity: None,
        })
    }

    /// A merge over requests partitions 0 and 1 and telemetry partition 0, with `max_idle_ms`.
    fn merge(max_idle_ms: u32) -> (Config, InputMerge) {
        let mut cfg = Config::default();
        cfg.kafka.max_idle_ms = max_idle_ms;
        let mut m = InputMerge::new(&cfg);
        let (requests, telemetry) = (cfg.topics.requests.clone(), cfg.topics.telemetry.clone());
        m.assign(&cfg, &requests, 0, Source::Requests, Some(0));
        m.assign(&cfg, &requests, 1, Source::Requests, Some(0));
        m.assign(&cfg, &telemetry, 0, Source::Control, Some(0));
        (cfg, m)
    }

    fn put(cfg: &Config, m: &mut InputMerge, topic: &str, partition: i32, event: Result<InputEvent, DecodeError>) {
        let input = cfg.topics.input_topic(topic).expect("an input topic");
        let i = m.index[&(input, partition)];
        let p = &mut m.parts[i];
        let offset = p.next_offset.unwrap_or(0);
        if let Ok(e) = &event {
            p.time = p.time.max(Some(e.ts()));
        }
        p.next_offset = Some(offset + 1);
        (p.dry_since, p.stalled_since, p.excused) = (None, None, false);
        p.buf.push_back(Buffered { offset, key: None, payload: Box::from(&b"{}"[..]), decoded: event });
        m.buffered += 1;
    }

    /// (topic, partition, ts) of the next ready message; `None` when it must wait or nothing is
    /// buffered. `left` says whether a partition has messages left to read.
    fn next(m: &mut InputMerge, now: Instant, left: bool) -> Option<(String, i32, Option<i64>, Option<i64>)> {
        match m.next(now, |_, _, _, _| left) {
            Next::Ready(r) => Some((r.topic, r.partition, r.message.decoded.ok().map(|e| e.ts().0), r.behind_ms)),
            Next::Wait(_) | Next::Empty => None,
        }
    }

    #[test]
    fn the_lowest_event_time_goes_first_across_partitions() {
        let (cfg, mut m) = merge(250);
        let (rq, tl) = (cfg.topics.requests.clone(), cfg.topics.telemetry.clone());
        put(&cfg, &mut m, &rq, 0, Ok(request(5_000)));
        put(&cfg, &mut m, &rq, 0, Ok(request(9_000)));
        put(&cfg, &mut m, &rq, 1, Ok(request(7_000)));
        put(&cfg, &mut m, &tl, 0, Ok(sample(6_000)));
        put(&cfg, &mut m, &tl, 0, Ok(sample(10_000)));
        let now = Instant::now();
        let order: Vec<Option<i64>> = std::iter::from_fn(|| next(&mut m, now, false)).map(|r| r.2).collect();
        // A request waits for the control inputs only (the sample at 10 s is there); the sample
        // waits for both requests partitions, which have nothing after 9 s and 7 s and nothing
        // to read.
        assert_eq!(order, vec![Some(5_000), Some(6_000), Some(7_000), Some(9_000)]);
        let later = now + Duration::from_millis(250);
        let rest: Vec<(Option<i64>, Option<i64>)> = std::iter::from_fn(|| next(&mut m, later, false)).map(|r| (r.2, r.3)).collect();
        // After the idle wait they are excused; the message that waited says by how much.
        assert_eq!(rest, vec![(Some(10_000), Some(3_000))]);
    }

    #[test]
    fn a_partition_excused_while_another_still_holds_the_message_is_said_when_it_goes() {
        let (cfg, mut m) = merge(250);
        let tl = cfg.topics.telemetry.clone();
        put(&cfg, &mut m, &tl, 0, Ok(sample(10_000)));
        let rq = cfg.topics.requests.clone();
        put(&cfg, &mut m, &rq, 0, Ok(request(1_000)));
        assert!(next(&mut m, Instant::now(), false).is_some_and(|r| r.2 == Some(1_000)));
        // The sample at 10 s waits for requests partition 0 (dry, at 1 s) and 1 (with messages
        // left to read): 0 is excused after the idle wait, 1 still holds it until STALL.
        let now = Instant::now();
        let mut left = |_: Source, _: &CString, p: i32, _: Option<i64>| p == 1;
        assert!(matches!(m.next(now, &mut left), Next::Wait(_)));
        assert!(matches!(m.next(now + Duration::from_millis(300), &mut left), Next::Wait(_)));
        match m.next(now + STALL, &mut left) {
            Next::Ready(r) => assert_eq!(r.behind_ms, Some(9_000), "partition 0 was 9 s behind"),
            _ => panic!("not ready after STALL"),
        }
    }

    #[test]
    fn a_partition_with_messages_left_to_read_is_waited_for() {
        let (cfg, mut m) = merge(0);
        let rq = cfg.topics.requests.clone();
        put(&cfg, &mut m, &rq, 0, Ok(request(5_000)));
        let now = Instant::now();
        // Telemetry and requests partition 1 have no event yet, and messages left to read.
        assert!(matches!(m.next(now, |_, _, _, _| true), Next::Wait(at) if at == now + STALL));
        // Even with no idle wait; until STALL without any message.
        assert!(next(&mut m, now + STALL, true).is_some_and(|r| r.2 == Some(5_000) && r.3.is_none()));
    }

    #[test]
    fn requests_go_before_control_events_of_the_same_time_and_undecodable_ones_at_once() {
        let (cfg, mut m) = merge(250);
        let (rq, tl) = (cfg.topics.requests.clone(), cfg.topics.telemetry.clone());
        put(&cfg, &mut m, &tl, 0, Ok(sample(5_000)));
        put(&cfg, &mut m, &rq, 0, Ok(request(5_000)));
        put(&cfg, &mut m, &rq, 1, Err(DecodeError::UnknownTopic("x".into())));
        put(&cfg, &mut m, &rq, 1, Ok(request(5_000)));
        let now = Instant::now();
        let got: Vec<(String, i32, Option<i64>)> = std::iter::from_fn(|| next(&mut m, now, false)).map(|r| (r.0, r.1, r.2)).collect();
        assert_eq!(got, vec![(rq.clone(), 1, None), (rq.clone(), 0, Some(5_000)), (rq, 1, Some(5_000)), (tl, 0, Some(5_000))]);
    }

    #[test]
    fn a_revoked_partition_loses_its_buffer_and_stops_holding_others_back() {
        let (cfg, mut m) = merge(250);
        let rq = cfg.topics.requests.clone();
        put(&cfg, &mut m, &rq, 0, Ok(request(5_000)));
        put(&cfg, &mut m, &rq, 1, Ok(request(1_000)));
        m.own_requests(&cfg, &[0], &[1], |_| None);
        assert_eq!(m.buffered, 1);
        let tl = cfg.topics.telemetry.clone();
        put(&cfg, &mut m, &tl, 0, Ok(sample(6_000)));
        assert_eq!(next(&mut m, Instant::now(), false).map(|r| r.2), Some(Some(5_000)));
    }
}
