//! Publishing for the `Shell`: one input message's outputs (decisions co-partitioned with their
//! request and carrying its offset, `first_decisions.rs`), dead letters, and the enqueueing that
//! waits for producer queue space.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::kafka::deliveries::{Origin, refused_for_good};
use crate::kafka::first_decisions;
use crate::kafka::merge::Source;
use crate::kafka::offsets::Partition;
use crate::kafka::shared::lock;
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

impl<'a> Shell<'a> {
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
        let origin: Origin = Box::new((tp.clone(), offset));
        let record = dead_letter_record(self.cfg, key, payload, e, origin);
        self.send(record).await
    }

    /// Sends the outputs the broker refused for good (`Deliveries::refused`) to the DLQ in their
    /// place: each under its output's origin, so that its input's offset moves on.
    pub(crate) async fn dead_letter_refused(&mut self) -> Result<usize, RunError> {
        let refused = std::mem::take(&mut lock(&self.deliveries).refused);
        let n = refused.len();
        for r in refused {
            let reason = dlq::Reason::new(REFUSED, &format!("the {} record of {} bytes was refused: {}", r.topic, r.value.len(), r.error));
            self.metrics.outputs_refused.inc();
            let record = dead_letter_record(self.cfg, r.key.as_deref(), &r.value, &reason, r.origin);
            self.send(record).await?;
        }
        Ok(n)
    }
    /// Encodes and enqueues one output.
    pub(crate) async fn publish(&mut self, o: &Output, origin: Origin) -> Result<(), RunError> {
        self.publish_with(o, origin, None, Headers::default()).await
    }

    /// `partition`: where the record goes (`None`: the producer's partitioner on its key).
    pub(super) async fn publish_with(&mut self, o: &Output, origin: Origin, partition: Option<i32>, headers: Headers) -> Result<(), RunError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if let Err(e) = o.write_json(&mut buf) {
            // An output that cannot be encoded (a non-finite number) would stop the service on
            // every restart: dropped, said and counted, and its input's offset moves on.
            self.buf = buf;
            tracing::error!(topic = output_topic(self.cfg, o), key = o.key(), error = %e, "an output could not be encoded: dropped");
            self.metrics.outputs_refused.inc();
            lock(&self.deliveries).ack(&origin.0, origin.1);
            return Ok(());
        }
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
    /// (the producer's own thread applies their reports). A record the producer refuses for its
    /// size goes to the DLQ in its place (under the same origin), and processing goes on.
    pub(crate) async fn send<'r>(&mut self, record: BaseRecord<'r, [u8], [u8], Origin>) -> Result<(), RunError>
    where
        'a: 'r,
    {
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
                Err((e, back)) if refused_for_good(&e) && back.topic != self.cfg.topics.dlq => {
                    let size = back.payload.map_or(0, <[u8]>::len) + back.key.map_or(0, <[u8]>::len);
                    tracing::warn!(topic = back.topic, bytes = size, error = %e, "an output was refused: to the DLQ");
                    self.metrics.outputs_refused.inc();
                    let reason = dlq::Reason::new(REFUSED, &format!("the {} record of {size} bytes was refused: {e}", back.topic));
                    record = dead_letter_record(self.cfg, back.key, back.payload.unwrap_or_default(), &reason, back.delivery_opaque);
                }
                Err((error, back)) => {
                    let (tp, offset) = &*back.delivery_opaque;
                    let input = (*offset >= 0).then(|| (tp.clone(), *offset));
                    return Err(RunError::Delivery { error, input });
                }
            }
        }
    }
}

/// The DLQ reason of an output the producer or the broker refused for good.
const REFUSED: &str = "output_refused";

/// The dead letter of `payload` (an input, or an output refused for good) for the input at
/// `origin`: cut to fit one record of the producer's `message.max.bytes`.
fn dead_letter_record<'r>(cfg: &'r Config, key: Option<&'r [u8]>, payload: &'r [u8], e: &dlq::Reason, origin: Origin) -> BaseRecord<'r, [u8], [u8], Origin> {
    let max = cfg.kafka.properties.get("message.max.bytes").and_then(|v| v.trim().parse().ok()).unwrap_or(dlq::DEFAULT_MESSAGE_MAX_BYTES);
    let fitted = dlq::fit(key, payload, max);
    let mut headers = OwnedHeaders::new_with_capacity(8);
    let (tp, offset) = &*origin;
    for (k, v) in dlq::headers(e, &tp.0, tp.1, *offset).into_iter().chain(fitted.cut) {
        headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    let mut record = BaseRecord::with_opaque_to(&cfg.topics.dlq, origin).payload(fitted.value).headers(headers);
    if let Some(k) = fitted.key {
        record = record.key(k);
    }
    record
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
