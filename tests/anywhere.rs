//! The binary as a user installs it: run from a directory outside the repository with no
//! `--config`, it uses the built-in default pipeline; `config print-default` writes that pipeline
//! out; the demo's API answers from its start on the address it prints.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Scratch, bin};

/// The binary, run in `dir`, with no pipeline named by the environment either.
fn surgeguard(dir: &Scratch) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(&dir.0).env_remove("SURGEGUARD_CONFIG").env("RUST_LOG", "warn");
    c
}

#[test]
fn print_default_writes_the_default_pipeline_and_check_config_accepts_it() {
    let dir = Scratch::new("print-default");
    let out = surgeguard(&dir).args(["config", "print-default"]).output().expect("run surgeguard");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shipped = std::fs::read(support::root().join("pipelines/default.toml")).expect("pipelines/default.toml");
    assert_eq!(out.stdout, shipped, "print-default is not pipelines/default.toml");
    std::fs::write(dir.path("mine.toml"), &out.stdout).expect("write");
    let check = surgeguard(&dir).args(["check-config", "mine.toml"]).output().expect("run surgeguard");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn replay_runs_outside_the_repository_without_a_config() {
    let dir = Scratch::new("replay-anywhere");
    let generated = surgeguard(&dir).args(["gen", "surge", "--out", "surge.jsonl"]).output().expect("run surgeguard");
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let out = surgeguard(&dir).args(["replay", "surge.jsonl", "--out", "out.jsonl"]).output().expect("run surgeguard");
    assert!(out.status.success(), "replay without --config failed: {}", String::from_utf8_lossy(&out.stderr));
    let outputs = std::fs::read_to_string(dir.path("out.jsonl")).expect("out.jsonl");
    let decisions = outputs.lines().filter(|l| l.contains("\"topic\":\"decisions\"")).count();
    assert!(decisions > 10_000, "{decisions} decisions from the surge");
    // The same input with the repository's file named explicitly gives the same bytes.
    let config = support::root().join("pipelines/default.toml");
    let named = surgeguard(&dir).args(["replay", "surge.jsonl", "--out", "named.jsonl", "--config"]).arg(&config).output().expect("run surgeguard");
    assert!(named.status.success(), "{}", String::from_utf8_lossy(&named.stderr));
    assert!(std::fs::read(dir.path("named.jsonl")).expect("named.jsonl") == outputs.as_bytes(), "the built-in default differs from pipelines/default.toml");
    // SURGEGUARD_CONFIG names a file when --config does not; a missing one is an error naming it.
    let missing =
        surgeguard(&dir).args(["replay", "surge.jsonl", "--out", "x.jsonl"]).env("SURGEGUARD_CONFIG", "nowhere.toml").output().expect("run surgeguard");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nowhere.toml"), "{}", String::from_utf8_lossy(&missing.stderr));
}

/// One HTTP/1.0 GET on loopback: the status line's code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the demo's API");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

#[test]
fn demo_runs_outside_the_repository_and_its_api_answers_from_the_start() {
    let dir = Scratch::new("demo-anywhere");
    let mut child = surgeguard(&dir)
        .args(["demo", "--speed", "50", "--api-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).ok();
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let started = Instant::now();
    let mut addr = None;
    let mut printed = Vec::new();
    while addr.is_none() && started.elapsed() < Duration::from_secs(60) {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.strip_prefix("HTTP API at http://") {
            addr = rest.split(':').take(2).collect::<Vec<_>>().join(":").split_whitespace().next().map(str::to_string);
        }
        printed.push(line);
    }
    let Some(addr) = addr else {
        child.kill().ok();
        child.wait().ok();
        panic!("no API address printed: {printed:?}\n{}", errors.join().unwrap_or_default());
    };
    assert!(printed.iter().any(|l| l.contains("embedded Kafka (mock cluster) at")), "{printed:?}");
    // At 50 simulated seconds per second the unprotected run takes about 30 s: the API answers in it.
    let (code, body) = get(&addr, "/v1/limits");
    assert_eq!(code, 200, "{body}");
    assert!(body.trim_start().starts_with('['), "{body}");
    assert_eq!(get(&addr, "/healthz").0, 200);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("demo exit");
    assert!(status.success(), "demo failed: {rest:?}\n{}", errors.join().unwrap_or_default());
    assert!(rest.iter().any(|l| l.contains("success rate") || l.contains("availability")), "no table: {rest:?}");
}
