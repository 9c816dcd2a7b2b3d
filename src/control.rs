//! The control side of `surgeguard run`: outcomes, telemetry and admin actions.
//!
//! Requests are split between the instances of a group; control events are not. Every instance
//! reads every partition of the control topics with a consumer of its own that is assigned them
//! (it never joins the group and never commits), so every instance folds the same health,
//! breakers and adaptive limits and applies the same current limits to its requests.
//!
//! A starting instance first reads the last `kafka.control_lookback_s` of the control topics
//! (found by timestamp) up to their ends, to rebuild breaker windows and the health view, before
//! it joins the group and decides anything. Only one instance publishes what the control side
//! produces (limit updates, breaker states, alerts, and control messages that fail to decode):
//! the leader, the instance that owns partition 0 of the requests topic. An instance that
//! becomes leader first publishes every current limit, so the compacted limits topic is whole.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::decode;
use crate::kafka_topics;
use crate::offsets::Partition;
use crate::topology::{Counted, Topology};

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// The control topics, each with its partition count.
fn control_partitions(consumer: &StreamConsumer, cfg: &Config) -> Result<Vec<Partition>, KafkaError> {
    let t = &cfg.topics;
    let mut out = Vec::new();
    for topic in [&t.outcomes, &t.telemetry, &t.admin] {
        let md = tokio::task::block_in_place(|| consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT))?;
        let n = md.topics().first().map_or(0, |m| m.partitions().len());
        out.extend((0..n as i32).map(|p| (topic.clone(), p)));
    }
    Ok(out)
}

/// Assigns every control partition from `lookback` ago; returns each partition's end at the time
/// (what the catch-up reads up to).
pub fn assign(consumer: &StreamConsumer, cfg: &Config) -> Result<HashMap<Partition, i64>, KafkaError> {
    let partitions = control_partitions(consumer, cfg)?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let since = now_ms - i64::from(cfg.kafka.control_lookback_s) * 1000;
    let mut by_time = TopicPartitionList::new();
    for (topic, p) in &partitions {
        by_time.add_partition_offset(topic, *p, Offset::Offset(since))?;
    }
    // The first offset at or after `since` per partition (the end when nothing is that new).
    let starts = match tokio::task::block_in_place(|| consumer.offsets_for_times(by_time, METADATA_TIMEOUT)) {
        Ok(tpl) => tpl,
        Err(e) => {
            tracing::warn!(error = %e, "control topics: offsets by time unavailable, reading from the start");
            let mut tpl = TopicPartitionList::new();
            for (topic, p) in &partitions {
                tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
            }
            tpl
        }
    };
    consumer.assign(&starts)?;
    let mut ends = HashMap::new();
    for (topic, p) in partitions {
        let (low, high) = tokio::task::block_in_place(|| kafka_topics::watermarks(consumer, &topic, p, METADATA_TIMEOUT))?;
        if high > low {
            ends.insert((topic, p), high);
        }
    }
    Ok(ends)
}

/// Reads the control partitions up to the ends `assign` found, folding them into `topology`
/// without publishing anything. Gives up waiting after `timeout` (and says so).
pub async fn catch_up(consumer: &StreamConsumer, cfg: &Config, mut ends: HashMap<Partition, i64>, topology: &mut Topology, timeout: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut outs = Vec::new();
    let mut read = 0u64;
    while !ends.is_empty() {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => {
                tracing::warn!(partitions = ends.len(), "control topics not read to their ends in {timeout:?}: going on");
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "control consumer error");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        read += 1;
        let tp = (m.topic().to_string(), m.partition());
        if let Some(topic) = crate::runtime::input_topic(cfg, &tp.0)
            && let Ok(event) = decode::decode(topic, m.payload().unwrap_or(&[]))
        {
            topology.process_in(0, event, Counted::No, &mut outs);
            outs.clear();
        }
        if ends.get(&tp).is_some_and(|&end| m.offset() + 1 >= end) {
            ends.remove(&tp);
        }
    }
    read
}
