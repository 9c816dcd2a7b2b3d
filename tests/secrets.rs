//! Secrets stay out of what the binary prints (issue 19): a value under a key naming a password,
//! secret, JAAS config, key or token is redacted from check-config's errors and from `run`'s
//! errors and logs, even when librdkafka refuses the property and quotes it.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{Scratch, bin};

const SECRET: &str = "hunter2-SECRET";

/// Two properties librdkafka refuses: a Java client's JAAS config, the password inside it, and a
/// property it does not know.
const REFUSED: &str = r#"
[kafka.properties]
"sasl.jaas.config" = "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"hunter2-SECRET\";"
"no.such.property" = "x"
"#;

/// SASL/PLAIN settings librdkafka takes, the password among them.
const ACCEPTED: &str = r#"
[kafka.properties]
"security.protocol" = "sasl_plaintext"
"sasl.mechanisms" = "PLAIN"
"sasl.username" = "u"
"sasl.password" = "hunter2-SECRET"
"#;

/// The binary with `args`, logging everything it logs by default and more.
fn surgeguard(dir: &Scratch, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.current_dir(&dir.0).env_remove("SURGEGUARD_CONFIG").env("RUST_LOG", "debug").env("NO_COLOR", "1").args(args);
    cmd
}

/// Reads all of `pipe` on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).ok();
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `cmd` to its end, or kills it after `limit`: (exit code, stdout, stderr).
fn run_for(cmd: &mut Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start surgeguard");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, out.join().expect("stdout"), err.join().expect("stderr"))
}

/// A local address nothing listens on: bound, then released.
fn closed_port() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    format!("127.0.0.1:{port}")
}

fn assert_no_secret(what: &str, stdout: &str, stderr: &str) {
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "{what} printed the secret:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("hunter2"), "{what} printed part of the secret:\n{stderr}");
}

#[test]
fn check_config_names_each_refused_property_without_its_value() {
    let dir = Scratch::new("secrets-check");
    let file = dir.write("refused.toml", REFUSED);
    let (code, stdout, stderr) = run_for(&mut surgeguard(&dir, &["check-config", &file]), Duration::from_secs(30));
    assert_eq!(code, Some(1), "check-config accepted what librdkafka refuses:\n{stdout}{stderr}");
    for (key, why) in [("sasl.jaas.config", "JAAS"), ("no.such.property", "No such configuration property")] {
        let line = format!("{file}: kafka.properties.\"{key}\": refused by librdkafka: ");
        assert!(stderr.lines().any(|l| l.trim().starts_with(&line) && l.contains(why)), "no line `{line}…{why}…` in:\n{stderr}");
    }
    assert_no_secret("check-config", &stdout, &stderr);
}

#[test]
fn check_config_takes_settings_librdkafka_takes() {
    let dir = Scratch::new("secrets-accepted");
    let file = dir.write("accepted.toml", ACCEPTED);
    let (code, stdout, stderr) = run_for(&mut surgeguard(&dir, &["check-config", &file]), Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("{file}: ok"));
    assert_no_secret("check-config", &stdout, &stderr);
}

#[test]
fn check_config_errors_that_quote_the_file_lose_its_secrets() {
    let dir = Scratch::new("secrets-quoted");
    // Unquoted: the TOML syntax error quotes the line.
    let syntax = dir.write("syntax.toml", "[kafka.properties]\n\"sasl.password\" = hunter2-SECRET\n");
    // A number: the type error quotes it.
    let typed = dir.write("typed.toml", "[kafka.properties]\n\"sasl.password\" = 20240611\n");
    for (file, secret) in [(&syntax, SECRET), (&typed, "20240611")] {
        let (code, stdout, stderr) = run_for(&mut surgeguard(&dir, &["check-config", file]), Duration::from_secs(30));
        assert_eq!(code, Some(1), "{stdout}{stderr}");
        assert!(stderr.contains("[redacted]") && !stderr.contains(secret), "{file}:\n{stderr}");
    }
}

#[test]
fn run_stops_on_a_refused_property_without_printing_its_value() {
    let dir = Scratch::new("secrets-run-refused");
    let file = dir.write("refused.toml", REFUSED);
    let brokers = closed_port();
    let started = Instant::now();
    let args = ["run", "--config", &file, "--brokers", &brokers, "--api-listen", ""];
    let (code, stdout, stderr) = run_for(&mut surgeguard(&dir, &args), Duration::from_secs(20));
    assert!(code.is_some_and(|c| c != 0), "run did not stop with an error (exit {code:?}, {:?}):\n{stderr}", started.elapsed());
    // The first client refuses one of the two, whichever librdkafka is handed first.
    assert!(stderr.contains("librdkafka refuses"), "{stderr}");
    assert!(stderr.contains("no.such.property") || stderr.contains("sasl.jaas.config"), "{stderr}");
    assert_no_secret("run", &stdout, &stderr);
}

#[test]
fn run_keeps_an_accepted_password_out_of_its_logs() {
    let dir = Scratch::new("secrets-run-accepted");
    let file = dir.write("accepted.toml", ACCEPTED);
    let brokers = closed_port();
    let mut child = surgeguard(&dir, &["run", "--config", &file, "--brokers", &brokers, "--api-listen", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start run");
    let rx = support::stderr_lines(&mut child);
    // Up to the first warning that the brokers do not answer, with librdkafka's reason.
    let started = Instant::now();
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(15).saturating_sub(started.elapsed())) {
        let warned = line.contains("cannot reach the Kafka brokers");
        seen.push(line);
        if warned {
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    let stderr = seen.join("\n");
    assert!(stderr.contains("cannot reach the Kafka brokers"), "no warning within 15 s:\n{stderr}");
    assert_no_secret("run", "", &stderr);
}
