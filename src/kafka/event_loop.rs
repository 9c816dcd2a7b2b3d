//! The main loop of `surgeguard run` (one run of the pipeline, `apps/run.rs`): messages from
//! the group's consumer and the control consumer into the input buffers (`merge.rs`), processed
//! in event-time order as their turn comes by the `Shell`; the API's decisions, reloaded configs
//! and the timers (every second; exactly-once's commits).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;

use crate::config::Config;
use crate::kafka::leadership::TRANSACTION_EVERY;
use crate::kafka::merge::{self, InputMerge, Next, Source};
use crate::kafka::rebalance::RunContext;
use crate::kafka::shell::{RunError, Shell};

/// How long consumer errors may go on, without any message in between, before the service stops
/// (librdkafka retries transient errors by itself; this catches the ones that never end).
const CONSUMER_GIVE_UP: Duration = Duration::from_secs(300);

/// How long the API's decisions gather before the main loop publishes them. The caller has its
/// answer already and the producer lingers 5 ms anyway; publishing on every wake-up cost the
/// handlers a futex wake and the main loop a round of its select per decision.
const API_PUBLISH_AFTER: Duration = Duration::from_millis(1);

/// What the event loop reads.
pub(crate) struct Inputs<'a> {
    pub requests: &'a StreamConsumer<RunContext>,
    pub control: &'a StreamConsumer,
    /// Where the control consumer starts each partition.
    pub control_from: Vec<(crate::kafka::offsets::Partition, i64)>,
    /// A handler's wake-up: the API queued decisions to publish.
    pub wake: &'a tokio::sync::Notify,
    pub reload: &'a mut Option<tokio::sync::mpsc::Receiver<Arc<Config>>>,
    /// The last config applied from `reload`.
    pub reloaded: &'a mut Option<Arc<Config>>,
    /// Bumped by the group's rebalances (`RunContext::rebalances`).
    pub rebalances: Arc<AtomicU64>,
}

/// The most messages taken off each consumer, and processed, per round of the loop.
const BATCH: usize = 256;

/// The most taken off each consumer in a round after one held back by a partition with messages
/// left to read (in a backlog, its next messages sit behind other partitions' in the queue).
const FILL_WHEN_HELD: usize = 4096;

/// The main loop, until `shutdown` completes or an error stops it: messages from both consumers
/// into the input buffers, processed in event-time order as their turn comes (`merge.rs`); the
/// API's decisions, reloaded configs, and the timers (every second, exactly-once's commits).
pub(crate) async fn event_loop(shell: &mut Shell<'_>, inputs: Inputs<'_>, idle_after: Duration, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let Inputs { requests: requests_consumer, control, control_from, wake, reload, reloaded, rebalances } = inputs;
    let cfg = shell.cfg();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut clock = Clock { ticks: 0, consumed_at_tick: 0, idle_since: Instant::now(), idle_after };
    let mut transaction_tick = tokio::time::interval(TRANSACTION_EVERY);
    transaction_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = Failing::default();
    tokio::pin!(shutdown);
    let mut merge = InputMerge::new(cfg);
    for ((topic, partition), from) in control_from {
        merge.assign(cfg, &topic, partition, Source::Control, Some(from));
    }
    let mut rebalanced = Rebalanced { count: rebalances, seen: u64::MAX };
    // One stream per consumer for the whole run: a `recv()` per message would register and drop
    // a waker slot each time.
    let (mut requests, mut controls) = (requests_consumer.stream(), control.stream());
    // Armed by the API's wake-up, fires API_PUBLISH_AFTER later (a handler wakes the loop only
    // when it finds the queue empty).
    let api_publish = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(api_publish);
    let mut api_armed = false;
    // Armed when a partition holds the next message back: when to look again.
    let held = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(held);
    let mut held_at = None;
    // Whether the last round was held back: the partition it waits for may be further down the
    // consumer's queue, so this round takes in more.
    let mut was_held = false;
    loop {
        rebalanced.sync(shell, &mut merge);
        // Control events wait until this instance knows whether it leads (see `control.rs`).
        let control_ready = shell.assigned();
        // What the consumers have ready, without waiting.
        let take = if was_held { FILL_WHEN_HELD } else { BATCH };
        for _ in 0..take {
            if merge.full() {
                break;
            }
            match requests.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    rebalanced.sync(shell, &mut merge);
                    merge.push(cfg, &m, Source::Requests);
                }
                Some(Some(Err(e))) => failing.error(e).await?,
                _ => break,
            }
        }
        for _ in 0..take {
            if merge.full() || !control_ready {
                break;
            }
            match controls.next().now_or_never() {
                Some(Some(Ok(m))) => merge.push(cfg, &m, Source::Control),
                Some(Some(Err(e))) => failing.error(e).await?,
                _ => break,
            }
        }
        // What may go now, in event-time order.
        let (mut more, mut hold) = (false, None);
        let now = Instant::now();
        for i in 0..BATCH {
            let left = |source: Source, topic: &std::ffi::CString, partition: i32, next: Option<i64>| match source {
                Source::Requests => merge::left_to_read(requests_consumer, topic, partition, next),
                Source::Control => merge::left_to_read(control, topic, partition, next),
            };
            match merge.next(now, left) {
                Next::Ready(r) => {
                    failing.ok();
                    shell.handle(r).await?;
                    shell.handled().await?;
                    more = i + 1 == BATCH;
                }
                Next::Wait(at) => {
                    hold = Some(at);
                    break;
                }
                Next::Empty => break,
            }
        }
        was_held = hold.is_some();
        // (A timer reset takes the timer driver's lock: only when the deadline moves.)
        if let Some(at) = hold
            && held_at != Some(at)
        {
            held_at = Some(at);
            held.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        let reading = !merge.full();
        tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            _ = tick.tick() => {
                // Requests partitions with nothing left to read are caught up, not behind: their
                // idle users may go at the pipeline's time.
                let caught_up = merge.caught_up_requests(|topic, partition, next| merge::left_to_read(requests_consumer, topic, partition, next));
                shell.requests_caught_up(&caught_up);
                clock.tick(shell).await?
            }
            _ = wake.notified(), if !api_armed => {
                api_armed = true;
                api_publish.as_mut().reset(tokio::time::Instant::now() + API_PUBLISH_AFTER);
            }
            _ = &mut api_publish, if api_armed => {
                api_armed = false;
                shell.publish_api_outputs().await?;
            }
            Some(new) = next_config(reload) => {
                *reloaded = Some(new.clone());
                shell.reconfigure(new).await?
            }
            _ = transaction_tick.tick(), if shell.exactly_once() => shell.commit_if_due().await?,
            Some(m) = requests.next(), if reading => match m {
                Ok(m) => {
                    rebalanced.sync(shell, &mut merge);
                    merge.push(cfg, &m, Source::Requests);
                }
                Err(e) => failing.error(e).await?,
            },
            Some(m) = controls.next(), if reading && control_ready => match m {
                Ok(m) => merge.push(cfg, &m, Source::Control),
                Err(e) => failing.error(e).await?,
            },
            _ = &mut held, if hold.is_some() => {}
            // More may go without waiting: another round.
            _ = std::future::ready(()), if more || !reading => {}
        }
    }
}

/// The loop's one-second timer: the shell's housekeeping, the wall clock after
/// `idle_after` without input, and a progress line every 30 s.
struct Clock {
    ticks: u64,
    consumed_at_tick: u64,
    idle_since: Instant,
    idle_after: Duration,
}

impl Clock {
    async fn tick(&mut self, shell: &mut Shell<'_>) -> Result<(), RunError> {
        self.ticks += 1;
        shell.tick().await?;
        if shell.stats.consumed != self.consumed_at_tick {
            self.consumed_at_tick = shell.stats.consumed;
            self.idle_since = Instant::now();
        } else if !self.idle_after.is_zero() && self.idle_since.elapsed() >= self.idle_after {
            shell.wall_clock().await?;
        }
        if self.ticks % 30 == 1 {
            let s = shell.stats;
            tracing::info!(
                consumed = s.consumed,
                produced = s.produced,
                dead_lettered = s.dead_lettered,
                in_flight = shell.in_flight(),
                leader = shell.leading(),
                "progress"
            );
        }
        Ok(())
    }
}

/// The group's rebalances the input buffers have followed.
struct Rebalanced {
    count: Arc<AtomicU64>,
    seen: u64,
}

impl Rebalanced {
    /// After a rebalance (checked before every requests message is taken in: the callbacks run
    /// in the consumer's poll), the buffers drop what was revoked and take what is owned.
    fn sync(&mut self, shell: &Shell<'_>, merge: &mut InputMerge) {
        let now = self.count.load(Ordering::SeqCst);
        if now != self.seen {
            self.seen = now;
            shell.sync_merge(merge);
        }
    }
}

/// Since when only consumer errors came.
#[derive(Default)]
struct Failing {
    since: Option<Instant>,
}

impl Failing {
    fn ok(&mut self) {
        self.since = None;
    }

    /// librdkafka retries and reconnects by itself; say so and carry on, unless nothing but
    /// errors has come for CONSUMER_GIVE_UP.
    async fn error(&mut self, e: KafkaError) -> Result<(), RunError> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= CONSUMER_GIVE_UP {
            return Err(RunError::ConsumerDown(since.elapsed(), e));
        }
        tracing::warn!(error = %e, "consumer error");
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }
}

/// The next reloaded config; never, without a watch.
async fn next_config(reload: &mut Option<tokio::sync::mpsc::Receiver<Arc<Config>>>) -> Option<Arc<Config>> {
    match reload {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
