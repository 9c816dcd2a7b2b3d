//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use surgeguard::config::Config;
use surgeguard::config_load;
use surgeguard::events::InputEvent;
use surgeguard::replay;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn default_config() -> Arc<Config> {
    Arc::new(config_load::load_file(&root().join("pipelines/default.toml")).unwrap_or_else(|e| panic!("{e}")))
}

/// Events as replay input lines.
pub fn jsonl(events: &[InputEvent]) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in events {
        e.write_tagged_line(&mut buf).expect("encodable");
    }
    buf
}

/// Replays `input` with `cfg`; returns the output bytes and the summary.
pub fn run(cfg: Arc<Config>, input: &[u8]) -> (Vec<u8>, replay::ReplaySummary) {
    let mut out = Vec::new();
    let summary = replay::replay(cfg, input, &mut out, |_, _| {}).expect("replay");
    (out, summary)
}

/// The path of the built `surgeguard` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_surgeguard"))
}
