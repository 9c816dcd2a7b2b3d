//! The settings every Kafka client of surgeguard starts from.

use rdkafka::ClientConfig;

use crate::config::Config;

/// The client settings shared by every client: the brokers and the pass-through properties.
pub fn client_config(cfg: &Config, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c
}
