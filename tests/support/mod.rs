//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod kafka;

use std::path::PathBuf;
use std::sync::Arc;

use surgeguard::apps::replay;
use surgeguard::config::Config;
use surgeguard::config::load;
use surgeguard::wire::events::InputEvent;

/// A spawned process's stderr, line by line, read on a thread of its own (for a test waiting for
/// a line with a deadline).
pub fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn default_config() -> Arc<Config> {
    Arc::new(load::load_file(&root().join("pipelines/default.toml")).unwrap_or_else(|e| panic!("{e}")))
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

/// A scratch directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("sg-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Writes `text` to `rel`; returns the path as a string.
    pub fn write(&self, rel: &str, text: &str) -> String {
        let p = self.path(rel);
        std::fs::write(&p, text).expect("write");
        p.to_string_lossy().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}
