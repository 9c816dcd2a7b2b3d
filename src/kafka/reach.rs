//! Is the cluster there? The first thing `run` asks, so that unreachable brokers (a wrong
//! address, a firewall, TLS or SASL refused) are named within seconds, with librdkafka's own
//! reason, instead of after 30 s of silence inside the first admin request. Its probe is also the
//! first client created, so a property librdkafka refuses stops `run` here, with the secret values
//! redacted (`config/secrets.rs`) from librdkafka's texts.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use crate::config::secrets;

/// One metadata request's wait: short, so the first warning comes within a few seconds.
const ATTEMPT: Duration = Duration::from_secs(2);
/// How often, at most, the warning is repeated while the brokers stay unreachable.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why `run` cannot talk to the brokers. The texts quoting librdkafka have the client's secret
/// values redacted.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// The brokers did not answer a metadata request within the deadline.
    #[error(
        "cannot reach the Kafka brokers {brokers}: {attempts} metadata requests over {waited:.0?} went unanswered: {reason} (check kafka.brokers / --brokers and the security settings in kafka.properties)"
    )]
    NoAnswer {
        brokers: String,
        attempts: u32,
        waited: Duration,
        /// librdkafka's last error, e.g. `Connect to ipv4#127.0.0.1:1 failed: Connection refused`.
        reason: String,
    },
    /// librdkafka refused the client's settings before any request: a property of
    /// kafka.properties, most likely.
    #[error("cannot start a Kafka client: {0} (check kafka.properties: `surgeguard check-config` names every property librdkafka refuses)")]
    Refused(String),
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
    // librdkafka's texts may quote a setting: a refused one, a key file's path.
    let hidden = secrets::client_secrets(base);
    let probe: BaseProducer<LastError> = match base.create_with_context(LastError::default()) {
        Ok(c) => c,
        Err(e) => return Err(Unreachable::Refused(secrets::kafka_error_text(&e, &hidden))),
    };
    let mut attempts = 0;
    let mut warned: Option<Instant> = None;
    loop {
        attempts += 1;
        let attempt = Instant::now();
        let answer = tokio::task::block_in_place(|| probe.client().fetch_metadata(None, ATTEMPT));
        // Serves the error events queued meanwhile (it produces nothing).
        probe.poll(Duration::ZERO);
        let reason = match answer {
            Ok(md) if !md.brokers().is_empty() => return Ok(md.brokers().len()),
            Ok(_) => "the cluster reported no brokers".to_string(),
            Err(e) => probe.client().context().reasons().unwrap_or_else(|| e.to_string()),
        };
        let reason = secrets::redact(&reason, hidden.iter().copied());
        let waited = started.elapsed();
        if waited >= deadline {
            return Err(Unreachable::NoAnswer { brokers: brokers.to_string(), attempts, waited, reason });
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
