//! The control side of `surgeguard run`: outcomes, telemetry and admin actions.
//!
//! Requests are split between the instances of a group; control events are not. Every instance
//! reads every partition of the control topics with a consumer of its own that is assigned them
//! (it never joins the group and never commits), so every instance folds the same health,
//! breakers and adaptive limits and applies the same current limits to its requests.
//!
//! A starting instance first reads the last `kafka.control_lookback_s` of the control topics (all
//! of the admin topic)
//! (found by timestamp) up to the offsets the group has committed for them, without publishing,
//! to rebuild breaker windows and the health view, before it joins the group and decides
//! anything (see `assign`); after that it reads on once the group has given it its partitions,
//! when it knows whether it leads. Only one instance publishes what the control side
//! produces (limit updates, breaker states, alerts, and control messages that fail to decode):
//! the leader, the instance that owns partition 0 of the requests topic. An instance that
//! becomes leader first publishes every current limit and breaker state, so the compacted topics
//! are whole.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::core::topology::{Counted, Topology};
use crate::kafka::offsets::Partition;
use crate::kafka::topics;
use crate::wire::decode;

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

/// Assigns every control partition; returns, per partition, the end of what the catch-up reads
/// without publishing.
///
/// The group commits the control partitions too (the leader does, after publishing), so a
/// partition is read from the earlier of `control_lookback_s` ago and the group's committed
/// offset: what lies before the committed offset was published already and only rebuilds state;
/// what lies after it is new, and the main loop processes (and the leader publishes) it. A group
/// that never committed treats everything from the lookback on as new.
pub fn assign(consumer: &StreamConsumer, cfg: &Config) -> Result<CatchUp, KafkaError> {
    let partitions = control_partitions(consumer, cfg)?;
    let now_ms = crate::kafka::clock::wall_clock().0;
    let since = now_ms - i64::from(cfg.kafka.control_lookback_s) * 1000;
    let mut by_time = TopicPartitionList::new();
    let mut all = TopicPartitionList::new();
    for (topic, p) in &partitions {
        // Admin actions stay in force until undone (a forced-open breaker, an override of up to
        // a week): the admin topic is read from its start, whatever the lookback.
        let from = if *topic == cfg.topics.admin { 0 } else { since };
        by_time.add_partition_offset(topic, *p, Offset::Offset(from))?;
        all.add_partition(topic, *p);
    }
    // The first offset at or after `since` per partition (the end when nothing is that new).
    let from_time = match tokio::task::block_in_place(|| consumer.offsets_for_times(by_time, METADATA_TIMEOUT)) {
        Ok(tpl) => tpl,
        Err(e) => {
            tracing::warn!(error = %e, "control topics: offsets by time unavailable, reading from the start");
            let mut tpl = TopicPartitionList::new();
            for (topic, p) in &partitions {
                // Offset 0, clamped to each partition's start below.
                tpl.add_partition_offset(topic, *p, Offset::Offset(0))?;
            }
            tpl
        }
    };
    let committed = tokio::task::block_in_place(|| consumer.committed_offsets(all, METADATA_TIMEOUT))?;
    let offset_in = |tpl: &TopicPartitionList, topic: &str, p: i32| {
        tpl.find_partition(topic, p).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
    };
    let mut resume = TopicPartitionList::new();
    let mut catch_up = CatchUp::default();
    for (topic, p) in partitions {
        let (low, high) = tokio::task::block_in_place(|| topics::watermarks(consumer, &topic, p, METADATA_TIMEOUT))?;
        let lookback = offset_in(&from_time, &topic, p).unwrap_or(high).max(low);
        let start = match offset_in(&committed, &topic, p) {
            Some(c) => c.min(lookback).max(low),
            None => lookback,
        };
        let silent_end = offset_in(&committed, &topic, p).map_or(start, |c| c.min(high)).max(start);
        resume.add_partition_offset(&topic, p, Offset::Offset(silent_end))?;
        catch_up.resume.push(((topic.clone(), p), silent_end));
        if silent_end > start {
            catch_up.ranges.push(((topic, p), start, silent_end));
        }
    }
    consumer.assign(&resume)?;
    Ok(catch_up)
}

/// What a starting instance reads without publishing: per partition, `[start, end)`.
#[derive(Debug, Default)]
pub struct CatchUp {
    pub ranges: Vec<(Partition, i64, i64)>,
    /// Where the main loop starts reading each partition.
    pub resume: Vec<(Partition, i64)>,
}

/// Reads the ranges `assign` planned with a consumer of its own, folding them into `topology`
/// without publishing anything. Gives up waiting after `timeout` (and says so).
pub async fn catch_up(client: &ClientConfig, plan: CatchUp, topology: &mut Topology, cfg: &Config, timeout: Duration) -> Result<u64, KafkaError> {
    if plan.ranges.is_empty() {
        return Ok(0);
    }
    // Earliest: a range whose start retention has removed begins at what is left.
    let consumer: StreamConsumer = client.clone().set("enable.auto.commit", "false").set("auto.offset.reset", "earliest").create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<Partition, i64> = HashMap::new();
    for (tp, start, end) in plan.ranges {
        tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(start))?;
        ends.insert(tp, end);
    }
    consumer.assign(&tpl)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut outs = Vec::new();
    let mut read = 0u64;
    while !ends.is_empty() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(partitions = ends.len(), "control topics not read up to the committed offsets in {timeout:?}: going on");
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            Err(_) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "control catch-up consumer error"),
            Ok(Ok(m)) => {
                let tp = (m.topic().to_string(), m.partition());
                if ends.get(&tp).is_some_and(|&end| m.offset() < end) {
                    read += 1;
                    // What the leader dead-lettered (undecodable, too far ahead) is skipped.
                    if let Some(topic) = cfg.topics.input_topic(&tp.0)
                        && let Ok(event) = decode::decode(topic, m.payload().unwrap_or(&[]), &cfg.limits)
                    {
                        let _refused = topology.process_from((topic, tp.1), event, Counted::No, &mut outs);
                        outs.clear();
                    }
                }
            }
        }
        // Done by position: transaction markers at the end are never delivered as messages.
        let positions = consumer.position()?;
        ends.retain(|(topic, p), end| match positions.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(at)) => at < *end,
            _ => true,
        });
    }
    Ok(read)
}
