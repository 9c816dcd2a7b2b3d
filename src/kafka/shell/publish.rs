//! Publishing for the `Shell`: one input message's outputs (decisions co-partitioned with their
//! request and carrying its offset, `first_decisions.rs`), dead letters, and the enqueueing that
//! waits for producer queue space.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::kafka::deliveries::Origin;
use crate::kafka::first_decisions;
use crate::kafka::merge::Source;
use crate::kafka::offsets::Partition;
use crate::kafka::shell::{CONTROL_BEHIND, RunError, Shell};
use crate::wire::dlq;
use crate::wire::outputs::Output;

fn output_topic<'a>(cfg: &'a Config, o: &Output) -> &'a str {
    let t = &cfg.topics;
    match o {
        Output::Decision(_) => &t.decisions,
        Output::Limit(_) => &t.limits,
        Output::Breaker(_) => &t.breakers,
        Output::Prediction(_) => &t.predictions,
        Output::Alert(_) => &t.alerts,
    }
}

/// The most of a bad input's value kept in its DLQ record (the producer refuses records over
/// `message.max.bytes`, 1 MB by default).
const DLQ_MAX_VALUE: usize = 512 * 1024;

impl Shell<'_> {
    /// Sends one input message's outputs (leaves `outs` empty). `holds`: the message also waits
    /// for a changelog record before its offset may be committed.
    /// `behind_ms`: the message waited for a control input past `kafka.max_idle_ms`, and that
    /// input's time was this far behind it: its decisions say so in a header.
    pub(super) async fn publish_outputs(
        &mut self,
        tp: &Partition,
        offset: i64,
        source: Source,
        outs: &mut Vec<Output>,
        holds: bool,
        behind_ms: Option<i64>,
    ) -> Result<(), RunError> {
        // Other instances publish the control side's outputs only when they lead.
        if !self.leadership.leading() {
            if source == Source::Control {
                self.leadership.suppress(tp, offset, outs);
            }
            outs.retain(|o| matches!(o, Output::Decision(_)));
        }
        self.metrics.count_outputs(outs);
        // Recorded before anything is sent (waiting for queue space may already bring this
        // message's first acknowledgements). Control partitions are committed by the leader.
        if source == Source::Requests || self.leadership.leading() {
            let n = outs.len() + usize::from(holds);
            self.begin(tp, offset, n as u32);
        }
        let mut sent = Ok(());
        for o in outs.drain(..) {
            if sent.is_err() {
                continue;
            }
            let origin: Origin = Box::new((tp.clone(), offset));
            sent = match &o {
                // Kept in the decisions topic for a later owner of the partition
                // (`first_decisions.rs`): at its request's partition number, with its offset.
                Output::Decision(_) if self.first_decisions && source == Source::Requests => self.publish_decision(&o, origin, tp.1, offset, behind_ms).await,
                Output::Decision(_) if behind_ms.is_some() => {
                    let mut headers = Headers::default();
                    headers.behind(behind_ms);
                    self.publish_with(&o, origin, None, headers).await
                }
                _ => self.publish(&o, origin).await,
            };
        }
        sent
    }

    /// A streamed request's decision, co-partitioned with its request and saying which it was.
    async fn publish_decision(&mut self, o: &Output, origin: Origin, partition: i32, offset: i64, behind_ms: Option<i64>) -> Result<(), RunError> {
        let mut headers = Headers::default();
        first_decisions::input_value(&self.cfg.kafka.group_id, partition, offset, &mut self.header_buf);
        headers.add(first_decisions::INPUT, &self.header_buf);
        headers.behind(behind_ms);
        self.publish_with(o, origin, Some(partition), headers).await
    }

    pub(crate) async fn dead_letter(&mut self, key: Option<&[u8]>, payload: &[u8], tp: &Partition, offset: i64, e: &dlq::Reason) -> Result<(), RunError> {
        self.stats.dead_lettered += 1;
        self.metrics.dead_lettered.inc();
        self.begin(tp, offset, 1);
        tracing::debug!(topic = %tp.0, partition = tp.1, offset, error = %e.message, "to the DLQ");
        let mut headers = OwnedHeaders::new();
        for (k, v) in dlq::headers(e, &tp.0, tp.1, offset) {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        // A value too large for the producer would stop the service on every restart: keep its
        // head, and say so.
        let kept = if payload.len() > DLQ_MAX_VALUE {
            headers = headers.insert(Header { key: dlq::TRUNCATED, value: Some(payload.len().to_string().as_bytes()) });
            &payload[..DLQ_MAX_VALUE]
        } else {
            payload
        };
        let origin: Origin = Box::new((tp.clone(), offset));
        let mut record = BaseRecord::with_opaque_to(&self.cfg.topics.dlq, origin).payload(kept).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.send(record).await
    }

    /// Encodes and enqueues one output.
    pub(crate) async fn publish(&mut self, o: &Output, origin: Origin) -> Result<(), RunError> {
        self.publish_with(o, origin, None, Headers::default()).await
    }

    /// `partition`: where the record goes (`None`: the producer's partitioner on its key).
    pub(super) async fn publish_with(&mut self, o: &Output, origin: Origin, partition: Option<i32>, headers: Headers) -> Result<(), RunError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        o.write_json(&mut buf)?;
        let mut record = BaseRecord::with_opaque_to(output_topic(self.cfg, o), origin).key(o.key().as_bytes()).payload(&buf[..]);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(h) = headers.0 {
            record = record.headers(h);
        }
        let sent = self.send(record).await;
        self.buf = buf;
        sent
    }

    /// Enqueues one record; while the producer queue is full, waits for deliveries to make room
    /// (the producer's own thread applies their reports).
    pub(crate) async fn send(&mut self, record: BaseRecord<'_, [u8], [u8], Origin>) -> Result<(), RunError> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.stats.produced += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(RunError::Kafka(e)),
            }
        }
    }
}

/// The headers of one output record (none: no allocation).
#[derive(Default)]
pub(super) struct Headers(Option<OwnedHeaders>);

impl Headers {
    fn add(&mut self, key: &str, value: &str) {
        let h = self.0.take().unwrap_or_else(|| OwnedHeaders::new_with_capacity(2));
        self.0 = Some(h.insert(Header { key, value: Some(value.as_bytes()) }));
    }

    /// `CONTROL_BEHIND`, when the message waited past the idle wait.
    fn behind(&mut self, behind_ms: Option<i64>) {
        if let Some(ms) = behind_ms {
            self.add(CONTROL_BEHIND, itoa::Buffer::new().format(ms));
        }
    }
}
