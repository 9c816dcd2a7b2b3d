//! At-least-once bookkeeping of the outputs in flight: which input message each output belongs
//! to, and how far each input partition's outputs are delivered (so its offset may be committed).
//! The producer's delivery callback applies each report as it comes (`DeliveryContext`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::offsets::{OffsetTracker, Partition};

/// Outputs in flight and what they belong to (at-least-once bookkeeping). Shared by the main
/// loop, the rebalance callbacks and the producer's delivery callback, which applies each report
/// as it comes (no future or channel per record). Lock order: `Shared` before `Deliveries`.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub tracker: OffsetTracker,
    /// Per input partition, the last offset whose outputs (and all before it) are delivered.
    delivered: HashMap<Partition, i64>,
    /// Partitions whose delivered prefix moved since the main loop last looked.
    moved: HashMap<Partition, i64>,
    /// Partitions revoked since the main loop last looked: offsets it staged for them before the
    /// revocation belong to an ownership that has ended.
    forgotten: Vec<Partition>,
    /// Per partition revoked once: where its current ownership started (its first `begin`), or
    /// none until it starts. A delivered prefix below it is an ended ownership's: a late report
    /// (a flush that timed out, a lost assignment) must not bring it back.
    floors: HashMap<Partition, Option<i64>>,
    /// The first delivery that failed, and the input its output came from (none when tied to
    /// no input): the main loop stops on it, and nothing after it commits.
    pub failed: Option<(KafkaError, Option<(Partition, i64)>)>,
    /// Outputs the broker refused for good (too large for their topic): the main loop sends each
    /// to the DLQ in its place, under the same origin, and goes on.
    pub refused: Vec<Refused>,
}

/// An output the broker refused for good, kept to be dead-lettered.
#[derive(Debug)]
pub struct Refused {
    pub origin: Origin,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub error: KafkaError,
}

/// Whether a produce error is the record's own fault, so that sending it again can never work
/// (rather than the producer's, the broker's or the network's).
pub fn refused_for_good(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord))
}

impl Deliveries {
    /// Records a message with `outputs` records in flight (see `OffsetTracker::begin`).
    pub fn begin(&mut self, tp: &Partition, offset: i64, outputs: u32) {
        if let Some(floor @ None) = self.floors.get_mut(tp) {
            *floor = Some(offset);
            self.tracker.drop_below(tp, offset);
        }
        if let Some(o) = self.tracker.begin(tp, offset, outputs) {
            self.advance(tp, o);
        }
    }

    /// Applies one successful delivery of an output of the message at `offset` of `tp`.
    pub fn ack(&mut self, tp: &Partition, offset: i64) {
        if let Some(o) = self.tracker.ack(tp, offset) {
            self.advance(tp, o);
        }
    }

    fn advance(&mut self, tp: &Partition, o: i64) {
        match self.floors.get(tp) {
            Some(None) => return,
            Some(Some(floor)) if o < *floor => return,
            _ => {}
        }
        self.delivered.insert(tp.clone(), o);
        self.moved.insert(tp.clone(), o);
    }

    /// The last offset of `tp` whose outputs, and all before it, are delivered.
    pub fn delivered(&self, tp: &Partition) -> Option<i64> {
        self.delivered.get(tp).copied()
    }

    /// Forgets how far a revoked partition's outputs are delivered. Should the partition come
    /// back after another instance has moved its offsets on, a prefix left over from this
    /// instance's earlier ownership would otherwise be committed again, moving them back.
    pub fn forget(&mut self, tp: &Partition) {
        self.delivered.remove(tp);
        self.moved.remove(tp);
        self.forgotten.push(tp.clone());
        self.floors.insert(tp.clone(), None);
    }

    /// The partitions forgotten since the last call.
    pub fn take_forgotten(&mut self) -> Vec<Partition> {
        std::mem::take(&mut self.forgotten)
    }

    /// The partitions whose delivered prefix moved since the last call, with that prefix.
    pub fn take_moved(&mut self) -> Vec<(Partition, i64)> {
        self.moved.drain().collect()
    }
}

/// Where an output came from: its input partition and offset (the delivery report's opaque).
pub type Origin = Box<(Partition, i64)>;

/// The producer's context: every delivery report goes straight to `Deliveries`.
pub struct DeliveryContext {
    pub deliveries: Arc<Mutex<Deliveries>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Origin;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Origin) {
        let mut d = self.deliveries.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(_) => d.ack(&origin.0, origin.1),
            // An aborted transaction's records (exactly-once, on a lost assignment or an error):
            // dropped on purpose, with their offsets.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight), _)) => {
                tracing::debug!(topic = %origin.0.0, partition = origin.0.1, offset = origin.1, "an output of an aborted transaction was purged");
            }
            Err((e, m)) if refused_for_good(e) => {
                tracing::warn!(topic = m.topic(), bytes = m.payload_len(), error = %e, "an output was refused: to the DLQ");
                d.refused.push(Refused {
                    origin,
                    topic: m.topic().to_string(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    error: e.clone(),
                });
            }
            Err((e, _)) => {
                // The first says it (the pipeline restarts on it); the others of the same fault
                // would only repeat it.
                if d.failed.is_none() {
                    tracing::error!(topic = %origin.0.0, partition = origin.0.1, offset = origin.1, error = %e, "an output was not delivered");
                    let input = (origin.1 >= 0).then(|| (origin.0.clone(), origin.1));
                    d.failed = Some((e.clone(), input));
                } else {
                    tracing::debug!(topic = %origin.0.0, partition = origin.0.1, offset = origin.1, error = %e, "an output was not delivered");
                }
            }
        }
    }
}

/// The service's producer.
pub type OutputProducer = ThreadedProducer<DeliveryContext>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_partition_keeps_no_delivered_prefix() {
        let mut d = Deliveries::default();
        let tp: Partition = ("requests".into(), 2);
        d.begin(&tp, 40, 1);
        d.ack(&tp, 40);
        assert_eq!(d.delivered(&tp), Some(40));
        d.forget(&tp);
        // Back after another owner moved on: nothing of the old ownership is committable.
        assert_eq!(d.delivered(&tp), None);
        assert!(d.take_moved().is_empty());
        assert_eq!(d.take_forgotten(), [tp.clone()]);
        assert!(d.take_forgotten().is_empty());
        d.begin(&tp, 90, 0);
        assert_eq!(d.delivered(&tp), Some(90));
    }

    #[test]
    fn a_late_report_of_an_ended_ownership_moves_nothing() {
        let mut d = Deliveries::default();
        let tp: Partition = ("requests".into(), 2);
        d.begin(&tp, 40, 1);
        // Revoked with the output still in flight (a flush that timed out), reported afterwards.
        d.forget(&tp);
        d.ack(&tp, 40);
        assert_eq!(d.delivered(&tp), None);
        assert!(d.take_moved().is_empty());
        // Back, from offset 90: an old output still in flight neither holds the new ones back
        // nor counts for them.
        d.begin(&tp, 35, 1);
        d.forget(&tp);
        d.begin(&tp, 90, 1);
        d.ack(&tp, 35);
        assert_eq!(d.delivered(&tp), None);
        d.ack(&tp, 90);
        assert_eq!(d.delivered(&tp), Some(90));
    }

    #[test]
    fn a_message_consumed_again_waits_for_both_ownerships_outputs() {
        let mut d = Deliveries::default();
        let tp: Partition = ("requests".into(), 0);
        d.begin(&tp, 100, 1);
        d.forget(&tp);
        // Back from the same offset, before the first output's report came.
        d.begin(&tp, 100, 1);
        d.ack(&tp, 100);
        assert_eq!(d.delivered(&tp), None, "one of two outputs");
        d.ack(&tp, 100);
        assert_eq!(d.delivered(&tp), Some(100));
    }
}
