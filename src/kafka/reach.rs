//! Is the cluster there? The first thing `run` asks, so that unreachable brokers (a wrong
//! address, a firewall, TLS or SASL refused) are named within seconds, with librdkafka's own
//! reason, instead of after 30 s of silence inside the first admin request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

/// One metadata request's wait: short, so the first warning comes within a few seconds.
const ATTEMPT: Duration = Duration::from_secs(2);
/// How often, at most, the warning is repeated while the brokers stay unreachable.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The brokers did not answer a metadata request within the deadline.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the Kafka brokers {brokers}: {attempts} metadata requests over {waited:.0?} went unanswered: {reason} (check kafka.brokers / --brokers and the security settings in kafka.properties)"
)]
pub struct Unreachable {
    pub brokers: String,
    pub attempts: u32,
    pub waited: Duration,
    /// librdkafka's last error, e.g. `Connect to ipv4#127.0.0.1:1 failed: Connection refused`.
    pub reason: String,
}

/// Remembers librdkafka's first few distinct errors (connection refused, name resolution, TLS,
/// SASL).
#[derive(Default)]
struct LastError(Mutex<Vec<String>>);

/// How many distinct errors one warning quotes.
const REASONS: usize = 4;

impl ClientContext for LastError {
    fn error(&self, error: KafkaError, reason: &str) {
        self.keep(if reason.is_empty() { error.to_string() } else { reason.to_string() });
    }

    /// librdkafka logs a failed connection (`Connect to … failed: Connection refused`, a TLS
    /// handshake, SASL) as it happens, from its own threads.
    fn log(&self, level: RDKafkaLogLevel, _facility: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.keep(message.to_string());
        }
    }
}

// A producer serves librdkafka's error events (with their text) through the context.
impl ProducerContext for LastError {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

impl LastError {
    fn keep(&self, text: String) {
        // "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to …": the thread is noise.
        let text = match text.strip_prefix("[thrd:").and_then(|t| t.split_once("]: ")) {
            Some((_, rest)) => rest.to_string(),
            None => text,
        };
        if let Ok(mut seen) = self.0.lock()
            && seen.len() < REASONS
            // "… (after 0ms in state CONNECT, 1 identical error(s) suppressed)": the same error.
            && !seen.iter().any(|r| same_error(r, &text))
        {
            seen.push(text);
        }
    }

    /// What went wrong so far, most telling first: librdkafka reports a failed connection once
    /// and then only that "N/N brokers are down".
    fn reasons(&self) -> Option<String> {
        let seen = self.0.lock().ok()?;
        let telling: Vec<&str> = seen.iter().map(|r| r.as_str()).filter(|r| !r.ends_with("brokers are down")).collect();
        let shown = if telling.is_empty() { seen.iter().map(|r| r.as_str()).collect() } else { telling };
        (!shown.is_empty()).then(|| shown.join("; "))
    }
}

fn same_error(a: &str, b: &str) -> bool {
    let cause = |s: &str| s.split(" (after ").next().unwrap_or_default().to_string();
    cause(a) == cause(b)
}

/// Waits until the cluster answers a metadata request, for at most `deadline`. While it does
/// not, warns (the brokers and librdkafka's reason) after the first failed attempt and every
/// [`WARN_EVERY`]. Returns the number of brokers the cluster reports.
pub async fn wait_for_brokers(base: &ClientConfig, brokers: &str, deadline: Duration) -> Result<usize, Unreachable> {
    let started = Instant::now();
    let unreachable = |attempts, reason: String| Unreachable { brokers: brokers.to_string(), attempts, waited: started.elapsed(), reason };
    let probe: BaseProducer<LastError> = match base.create_with_context(LastError::default()) {
        Ok(c) => c,
        Err(e) => return Err(unreachable(0, e.to_string())),
    };
    let mut attempts = 0;
    let mut reason;
    let mut warned: Option<Instant> = None;
    loop {
        attempts += 1;
        let attempt = Instant::now();
        let answer = tokio::task::block_in_place(|| probe.client().fetch_metadata(None, ATTEMPT));
        // Serves the error events queued meanwhile (it produces nothing).
        probe.poll(Duration::ZERO);
        match answer {
            Ok(md) if !md.brokers().is_empty() => return Ok(md.brokers().len()),
            Ok(_) => reason = "the cluster reported no brokers".into(),
            Err(e) => reason = probe.client().context().reasons().unwrap_or_else(|| e.to_string()),
        }
        let waited = started.elapsed();
        if waited >= deadline {
            return Err(unreachable(attempts, reason));
        }
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(brokers, attempts, waited = ?Duration::from_secs(waited.as_secs()), giving_up_after = ?deadline, %reason, "cannot reach the Kafka brokers yet: retrying");
            warned = Some(Instant::now());
        }
        // A refused connection can fail at once: pace the attempts.
        if attempt.elapsed() < Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
