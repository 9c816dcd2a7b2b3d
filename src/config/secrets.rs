//! Secrets kept out of what surgeguard prints. A config value under a key that names a password,
//! secret, JAAS config, key or token (`sasl.password`, `sasl.jaas.config`, `ssl.key.location`,
//! `sasl.oauthbearer.client.secret`, …) becomes `[redacted]` wherever it could be printed: load
//! and reload errors (a TOML syntax error quotes its line), librdkafka's refusal of a property (it
//! quotes the value, and rdkafka prints the value again beside it), the Kafka clients' errors and
//! warnings, and the error `main` prints last (through the values [`remember`]ed when the config was
//! loaded).
//!
//! Redaction goes by value, not by the shape of a message: every copy of a secret value goes,
//! whoever quoted it. The callers: `apps/config.rs` (check-config), `apps/cli.rs` (loading),
//! `config/reload.rs`, `kafka/reach.rs` and `kafka/topics.rs` (client errors), `api/admin.rs`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::Config;

/// What a secret value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The words that make a key secret, anywhere in it, whatever the case. "key" matches many names
/// (`ssl.key.location`, `ssl.keystore.location`, `…assertion.private.key.file`): meant, where a
/// private key lives is worth hiding too.
const SECRET_WORDS: [&str; 5] = ["password", "secret", "jaas", "key", "token"];

/// The shortest cut-off copy of a secret, ending a text, that is still redacted: librdkafka's
/// error text stops at 511 bytes, possibly inside a long value (a JAAS config). Shorter ends would
/// match the first letters of a secret by chance.
const CUT_COPY_MIN: usize = 8;

/// Whether a config key (a librdkafka property's name, say) holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// `text` with every copy of each of `values` replaced by [`REDACTED`], the longest value first at
/// each place (a password inside a JAAS config goes with the whole config). A text that ends with
/// the first [`CUT_COPY_MIN`] bytes or more of a value, cut off, loses that end too. Empty values
/// are ignored.
pub fn redact<'a>(text: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    let mut values: Vec<&str> = values.into_iter().filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        return text.to_string();
    }
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(v) = values.iter().find(|v| rest.starts_with(**v)) {
            out.push_str(REDACTED);
            rest = &rest[v.len()..];
        } else if rest.len() >= CUT_COPY_MIN && values.iter().any(|v| v.starts_with(rest)) {
            out.push_str(REDACTED);
            break;
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The values of the secret keys among `pairs`, trimmed (librdkafka trims a value before it quotes
/// it), without empty or repeated ones.
pub fn secret_values<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<&'a str> {
    let values: BTreeSet<&str> = pairs.into_iter().filter(|(k, _)| is_secret_key(k)).map(|(_, v)| v.trim()).filter(|v| !v.is_empty()).collect();
    values.into_iter().collect()
}

/// The secret values of a loaded config: those of its `kafka.properties`, the only settings passed
/// through unchecked. No typed key holds a secret (`api.admin_token_env` names the variable that
/// holds the admin token; the token never enters the config).
pub fn config_secrets(cfg: &Config) -> Vec<&str> {
    secret_values(cfg.kafka.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// The secret values a Kafka client is configured with. rdkafka's own view of the settings hides a
/// few of them, not all; `get` gives each as it was set.
pub fn client_secrets(client: &ClientConfig) -> Vec<&str> {
    secret_values(client.config_map().into_keys().filter_map(|k| Some((k, client.get(k)?))))
}

/// The secret values a pipeline file holds, for the errors of loading it, which may quote them:
/// what it parses to under a secret key, at any depth (a number too: a type error quotes it), and,
/// line by line, what follows `KEY =` for a secret KEY, as written (a TOML syntax error quotes its
/// line, and the file may not parse at all).
pub fn file_secrets(text: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Ok(table) = text.parse::<toml::Table>() {
        table_secrets(&table, &mut out);
    }
    for line in text.lines() {
        for (i, _) in line.match_indices('=') {
            // The key before this `=`: from the line's start, or an inline table's `{` or `,`.
            let before = &line[..i];
            let key = before.rfind(|c: char| c == '{' || c == ',').map_or(before, |j| &before[j + 1..]);
            let value = line[i + 1..].trim();
            if is_secret_key(key) && !value.is_empty() {
                out.insert(value.to_string());
            }
        }
    }
    out.into_iter().collect()
}

/// Adds the values under secret keys in `table`, at any depth, to `out`.
fn table_secrets(table: &toml::Table, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        value_secrets(value, is_secret_key(key), out);
    }
}

/// Adds `value` to `out` if it is under a secret key (`secret`), or what a table in it holds under
/// secret keys of its own.
fn value_secrets(value: &toml::Value, secret: bool, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => table_secrets(t, out),
        toml::Value::Array(items) => items.iter().for_each(|v| value_secrets(v, secret, out)),
        toml::Value::String(s) if secret && !s.trim().is_empty() => {
            out.insert(s.trim().to_string());
        }
        toml::Value::Integer(i) if secret => {
            out.insert(i.to_string());
        }
        toml::Value::Float(f) if secret => {
            out.insert(f.to_string());
        }
        _ => {}
    }
}

/// `text`, an error of loading the pipeline file `path`, with the file's secret values redacted.
pub fn redact_for_file(text: &str, path: &Path) -> String {
    let secrets = file_secrets(&std::fs::read_to_string(path).unwrap_or_default());
    redact(text, secrets.iter().map(String::as_str))
}

/// A Kafka client's error with `secrets` redacted. librdkafka's refusal of a property
/// (`KafkaError::ClientConfig`) may quote the value in its text, and rdkafka keeps the value beside
/// it and prints both: the value of a secret key goes whatever it is, and the text loses every
/// secret it quotes.
pub fn redact_kafka_error(e: KafkaError, secrets: &[&str]) -> KafkaError {
    let r = |text: &str| redact(text, secrets.iter().copied());
    match e {
        KafkaError::ClientConfig(res, why, key, value) => {
            let value = if is_secret_key(&key) { REDACTED.to_string() } else { r(&value) };
            KafkaError::ClientConfig(res, r(why.trim()), key, value)
        }
        KafkaError::ClientCreation(why) => KafkaError::ClientCreation(r(&why)),
        other => other,
    }
}

/// A Kafka client's error as text, with `secrets` redacted; a refused property reads
/// `librdkafka refuses "KEY" = "VALUE": WHY`.
pub fn kafka_error_text(e: &KafkaError, secrets: &[&str]) -> String {
    match redact_kafka_error(e.clone(), secrets) {
        KafkaError::ClientConfig(_, why, key, value) => format!("librdkafka refuses \"{key}\" = {value:?}: {why}"),
        other => redact(&other.to_string(), secrets.iter().copied()),
    }
}

/// The secret values of the config this process runs, [`remember`]ed when it was loaded.
static KNOWN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Adds `values` to those [`redact_known`] takes out.
pub fn remember<'a>(values: impl IntoIterator<Item = &'a str>) {
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    for v in values {
        if !v.is_empty() && !known.iter().any(|k| k == v) {
            known.push(v.to_string());
        }
    }
}

/// `text` with every value [`remember`]ed so far redacted: for a text whose config is not at hand,
/// such as the error `main` prints last, which may come from any of the clients.
pub fn redact_known(text: &str) -> String {
    let known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    redact(text, known.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAAS: &str = r#"org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="hunter2";"#;

    #[test]
    fn keys_naming_a_password_secret_jaas_key_or_token_are_secret() {
        for key in [
            "sasl.password",
            "SASL.JAAS.CONFIG",
            "ssl.key.password",
            "ssl.key.location",
            "ssl.keystore.location",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.token.endpoint.url",
            "my_api_Token",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["security.protocol", "sasl.mechanisms", "sasl.username", "client.id", "bootstrap.servers", "ssl.ca.location", ""] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn every_copy_goes_the_longest_value_first() {
        assert_eq!(redact("a hunter2 b hunter2", ["hunter2"]), "a [redacted] b [redacted]");
        // The password alone would leave the rest of the JAAS config.
        assert_eq!(redact(&format!("value {JAAS}."), ["hunter2", JAAS]), "value [redacted].");
        assert_eq!(redact(&format!("password=\"hunter2\" in {JAAS}"), ["hunter2", JAAS]), "password=\"[redacted]\" in [redacted]");
        // Nothing to redact, or only empty values: the text as it is.
        assert_eq!(redact("héllo ünïcode", ["x"]), "héllo ünïcode");
        assert_eq!(redact("hello", Vec::<&str>::new()), "hello");
        assert_eq!(redact("hello", [""]), "hello");
        // A secret of one letter is a secret too.
        assert_eq!(redact("a-b-a", ["a"]), "[redacted]-b-[redacted]");
        // Neither the replacement nor a secret right after another is left half done.
        assert_eq!(redact("redred", ["red"]), "[redacted][redacted]");
    }

    #[test]
    fn a_copy_cut_off_at_the_end_goes_unless_it_is_short() {
        let secret = "correct-horse-battery-staple";
        assert_eq!(redact("Invalid value: correct-horse-bat", [secret]), "Invalid value: [redacted]");
        // Seven letters could be any word's start: kept.
        assert_eq!(redact("Invalid value: correct", [secret]), "Invalid value: correct");
        // Not at the end: not a cut-off copy.
        assert_eq!(redact("correct-horse-bat and more", [secret]), "correct-horse-bat and more");
    }

    #[test]
    fn secret_values_are_those_of_secret_keys_trimmed() {
        let pairs = [
            ("sasl.password", "  p4ss "),
            ("sasl.username", "user"),
            ("ssl.key.password", "p4ss"),
            ("sasl.jaas.config", "   "),
            ("security.protocol", "sasl_ssl"),
        ];
        assert_eq!(secret_values(pairs), vec!["p4ss"]);
        let mut cfg = Config::default();
        cfg.kafka.properties.insert("sasl.jaas.config".into(), JAAS.into());
        cfg.kafka.properties.insert("client.id".into(), "me".into());
        assert_eq!(config_secrets(&cfg), vec![JAAS]);
    }

    #[test]
    fn a_client_shows_every_secret_even_those_rdkafka_hides() {
        let mut client = ClientConfig::new();
        client.set("sasl.password", "p4ss").set("sasl.jaas.config", JAAS).set("client.id", "me");
        let mut found = client_secrets(&client);
        found.sort();
        assert_eq!(found, vec![JAAS, "p4ss"]);
    }

    #[test]
    fn a_file_gives_what_it_parses_to_and_its_lines_as_written() {
        let text = r#"
[api]
admin_token_env = "ADMIN"

[kafka.properties]
"sasl.jaas.config" = "PlainLoginModule required password=\"hunter2\";"
"sasl.password" = 20240611
"client.id" = "me"
"#;
        let found = file_secrets(text);
        // Parsed: the escapes resolved.
        assert!(found.contains(&r#"PlainLoginModule required password="hunter2";"#.to_string()), "{found:?}");
        assert!(found.contains(&"20240611".to_string()), "{found:?}");
        // As written, which a syntax error on the line would quote.
        assert!(found.contains(&r#""PlainLoginModule required password=\"hunter2\";""#.to_string()), "{found:?}");
        assert!(!found.contains(&"me".to_string()) && !found.contains(&"\"me\"".to_string()), "{found:?}");
        // A file that does not parse: its lines still give the values as written, inline tables too.
        let broken = "[kafka]\nproperties = { \"client.id\" = \"me\", \"sasl.password\" = hunter2 }\n";
        let found = file_secrets(broken);
        assert!(found.iter().any(|v| v.starts_with("hunter2")), "{found:?}");
        let error = broken.parse::<toml::Table>().expect_err("not TOML").to_string();
        assert!(error.contains("hunter2"), "the error quotes the line: {error}");
        assert!(!redact(&error, found.iter().map(String::as_str)).contains("hunter2"));
    }

    #[test]
    fn librdkafka_refusing_a_property_loses_its_secret() {
        let refused = |key: &str, value: &str| ClientConfig::new().set(key, value).create_native_config().err().expect("refused");
        // rdkafka prints the value beside librdkafka's reason.
        let e = refused("sasl.jaas.config", JAAS);
        assert!(e.to_string().contains("hunter2"), "{e}");
        let secrets = [JAAS];
        for text in [redact_kafka_error(e.clone(), &secrets).to_string(), kafka_error_text(&e, &secrets)] {
            assert!(!text.contains("hunter2") && text.contains("sasl.jaas.config") && text.contains(REDACTED), "{text}");
        }
        // librdkafka's reason quotes a bad value itself.
        let e = refused("security.protocol", "sasl_hunter2");
        assert!(e.to_string().matches("sasl_hunter2").count() >= 2, "{e}");
        let text = kafka_error_text(&e, &["sasl_hunter2"]);
        assert!(!text.contains("hunter2") && text.starts_with("librdkafka refuses \"security.protocol\" = \"[redacted]\": "), "{text}");
    }

    #[test]
    fn remembered_values_are_redacted_from_any_text() {
        remember(["remembered-9d1c", ""]);
        remember(["remembered-9d1c"]);
        assert_eq!(redact_known("error: remembered-9d1c refused"), "error: [redacted] refused");
    }
}
