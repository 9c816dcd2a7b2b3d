//! `surgeguard run` with brokers that do not answer names them, and librdkafka's reason, within
//! seconds, and gives up with a clear error instead of waiting silently.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Scratch, bin};

#[test]
fn run_names_an_unreachable_broker_within_seconds() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let brokers = format!("127.0.0.1:{port}");
    let dir = Scratch::new("unreachable");
    let mut child = Command::new(bin())
        .current_dir(&dir.0)
        .env_remove("SURGEGUARD_CONFIG")
        .env("NO_COLOR", "1")
        .args(["run", "--brokers", &brokers, "--api-listen", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start run");
    let rx = support::stderr_lines(&mut child);
    let started = Instant::now();
    let mut seen = Vec::new();
    let warning = loop {
        match rx.recv_timeout(Duration::from_secs(10).saturating_sub(started.elapsed())) {
            Ok(line) if line.contains("cannot reach the Kafka brokers") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let took = started.elapsed();
    child.kill().ok();
    child.wait().ok();
    let warning = warning.unwrap_or_else(|| panic!("no warning within 10 s; stderr: {seen:#?}"));
    assert!(warning.contains(&brokers), "the warning does not name {brokers}: {warning}");
    assert!(warning.contains("Connection refused"), "the warning does not say why: {warning}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
