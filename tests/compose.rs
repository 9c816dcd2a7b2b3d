//! docker-compose.yml cannot run here (no Docker engine), so this holds it to what the scripts
//! run: valid YAML, the same Kafka version as scripts/kafka, the same broker settings, and the
//! same topics (names, partitions, topic configs) as `surgeguard run` creates from the default
//! pipeline.

mod support;

use std::collections::BTreeMap;

use surgeguard::kafka::topics;
use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let text = std::fs::read_to_string(support::root().join("docker-compose.yml")).expect("docker-compose.yml");
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("docker-compose.yml is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

fn script_kafka_version() -> String {
    let script = std::fs::read_to_string(support::root().join("scripts/kafka")).expect("scripts/kafka");
    script
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION="))
        .map(|v| v.trim_matches(|c| c == '"' || c == '\'').to_string())
        .expect("KAFKA_VERSION= in scripts/kafka")
}

#[test]
fn compose_runs_the_same_kafka_as_the_scripts() {
    let c = compose();
    let version = script_kafka_version();
    for service in ["kafka", "kafka-init"] {
        let image = c["services"][service]["image"].as_str().unwrap_or_else(|| panic!("{service} has an image"));
        assert_eq!(image, format!("apache/kafka:{version}"), "{service}");
    }
    let env = &c["services"]["kafka"]["environment"];
    for key in ["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] {
        assert_eq!(env[key].as_i64(), Some(1), "{key}");
    }
    assert_eq!(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].as_str(), Some("false"));
    let cmd: Vec<&str> = c["services"]["surgeguard"]["command"].as_vec().expect("command").iter().filter_map(Yaml::as_str).collect();
    assert_eq!(cmd[0], "run");
    // The API listens on the container's interfaces, published on the host's loopback.
    let listen = cmd.iter().position(|a| *a == "--api-listen").and_then(|i| cmd.get(i + 1)).expect("--api-listen");
    let addr: std::net::SocketAddr = listen.parse().expect("an address");
    let ports: Vec<&str> = c["services"]["surgeguard"]["ports"].as_vec().expect("ports").iter().filter_map(Yaml::as_str).collect();
    assert_eq!(ports, [format!("127.0.0.1:{0}:{0}", addr.port())]);
}

#[test]
fn compose_creates_the_topics_surgeguard_run_would() {
    let c = compose();
    let script = c["services"]["kafka-init"]["command"][0].as_str().expect("kafka-init command");
    // `create NAME PARTITIONS [--config KEY=VALUE]…`
    let created: BTreeMap<String, (i32, Vec<(String, String)>)> = script
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("create "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let configs = words
                .windows(2)
                .filter(|w| w[0] == "--config")
                .map(|w| {
                    let (k, v) = w[1].split_once('=').expect("--config KEY=VALUE");
                    (k.to_string(), v.to_string())
                })
                .collect();
            (words[0].to_string(), (words[1].parse().expect("partitions"), configs))
        })
        .collect();
    let want: BTreeMap<String, (i32, Vec<(String, String)>)> = topics::specs(&support::default_config())
        .into_iter()
        .map(|s| (s.name, (s.partitions, s.configs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())))
        .collect();
    assert_eq!(created, want);
}
