//! Hostile input, generated (issue 19, item 9): the decoders, the config loader and the decide
//! body's decoder never panic, whatever bytes they get — large (up to a megabyte), deeply nested,
//! invalid UTF-8, near-valid records with one field mangled. No coverage-guided fuzzer runs on
//! this stable toolchain without downloads from outside the registries (cargo-fuzz needs a
//! nightly, cargo-afl builds AFL++ with LLVM plugins), so these are property tests: a few hundred
//! cases per target in `cargo test`, and as many as `SURGEGUARD_SOAK_CASES` says in
//! `scripts/soak`, which reports how many inputs ran.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use surgeguard::config::load;
use surgeguard::wire::decode::{decode, decode_request_at, decode_tagged};
use surgeguard::wire::events::InputTopic;
use surgeguard::wire::limits::InputLimits;
use surgeguard::wire::time::Millis;

/// Cases per target: `SURGEGUARD_SOAK_CASES`, else a few hundred.
fn cases() -> u32 {
    std::env::var("SURGEGUARD_SOAK_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

static INPUTS: AtomicU64 = AtomicU64::new(0);

/// Counts one input (the soak script prints the total).
fn ran() {
    INPUTS.fetch_add(1, Ordering::Relaxed);
}

/// A valid record of each input topic, to mangle.
const RECORDS: [&str; 5] = [
    r#"{"id":"r1","ts":"2026-11-30T09:00:00Z","user_id":"u1","tier":"pro","request_type":"standard","cost":2}"#,
    r#"{"ts":"2026-11-30T09:00:00Z","dependency":"ai","ok":false,"error":"timeout","latency_ms":12.5,"request_id":"r1"}"#,
    r#"{"ts":"2026-11-30T09:00:00Z","source":"h1","cpu":0.5,"memory":0.4,"db_connections_in_use":3,"db_connections_max":10,"queue_depth":5,"queue_capacity":100}"#,
    r#"{"ts":"2026-11-30T09:00:00Z","action":"override_limit","key":"free/standard","rpm":5,"until":"2026-11-30T10:00:00Z","actor":"ops"}"#,
    r#"{"topic":"requests","id":"r1","ts":"2026-11-30T09:00:00Z","user_id":"u1","tier":"pro","request_type":"standard"}"#,
];

/// JSON-ish values: scalars, strings of every kind of character and length, nesting.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        any::<i64>().prop_map(|i| i.to_string()),
        "[0-9]{1,400}".prop_map(|s| s),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        ("[ -~]{1,3}", 0usize..20_000).prop_map(|(s, n)| serde_json::to_string(&s.repeat(n)).unwrap_or_default()),
        Just("\"\\ud800\"".to_string()),
        Just("1e999999".to_string()),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z_]{1,12}", inner), 0..8)
                .prop_map(|kv| format!("{{{}}}", kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","))),
        ]
    })
}

/// Inputs a hostile producer sends: raw bytes, deep nesting, huge strings, a valid record with
/// one field replaced, cut, or followed by junk.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..4096),
        (1usize..100_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        (1usize..50_000).prop_map(|depth| format!("{}1", "{\"a\":".repeat(depth)).into_bytes()),
        (0usize..RECORDS.len(), "[a-z_]{1,14}", value()).prop_map(|(i, field, v)| {
            let mut obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(RECORDS[i]).unwrap_or_default();
            obj.remove(&field);
            let text = serde_json::to_string(&obj).unwrap_or_default();
            format!("{},\"{field}\":{v}}}", &text[..text.len() - 1]).into_bytes()
        }),
        (0usize..RECORDS.len(), any::<prop::sample::Index>()).prop_map(|(i, cut)| RECORDS[i].as_bytes()[..cut.index(RECORDS[i].len())].to_vec()),
        (0usize..RECORDS.len(), prop::collection::vec(any::<u8>(), 1..64), any::<prop::sample::Index>()).prop_map(|(i, junk, at)| {
            let mut b = RECORDS[i].as_bytes().to_vec();
            let at = at.index(b.len());
            b.splice(at..at, junk);
            b
        }),
        (0usize..1_000_000).prop_map(|n| vec![b'x'; n]),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoders_never_panic(bytes in hostile()) {
        ran();
        let small = InputLimits { record_bytes: 256, id_bytes: 4, user_id_bytes: 4, name_bytes: 4, text_bytes: 4 };
        for limits in [InputLimits::DEFAULT, small] {
            for topic in InputTopic::ALL {
                if let Err(e) = decode(topic, &bytes, &limits) {
                    // The reason never carries a whole oversized value.
                    prop_assert!(e.to_string().len() < 1024, "{} bytes of reason", e.to_string().len());
                }
            }
            let _ = decode_request_at(&bytes, Millis(0), &limits);
        }
        let _ = decode_tagged(&bytes);
    }

    #[test]
    fn the_config_loader_never_panics(text in prop_oneof![
        any::<String>(),
        value(),
        ("[a-z_]{1,12}", "[a-z_]{1,20}", value()).prop_map(|(s, k, v)| format!("[{s}]\n{k} = {v}\n")),
        (any::<prop::sample::Index>(), value()).prop_map(|(at, v)| {
            let base = load::DEFAULT_PIPELINE;
            let lines: Vec<&str> = base.lines().collect();
            let i = at.index(lines.len());
            let key = lines[i].split('=').next().unwrap_or("x").trim();
            let mut out = lines.clone();
            let replaced = format!("{key} = {v}");
            out[i] = &replaced;
            out.join("\n")
        }),
    ]) {
        ran();
        let _ = load::load_str(&text, "hostile.toml");
    }
}

/// Runs last in the file's order when tests run on one thread (`scripts/soak`): how many inputs.
#[test]
fn zz_report_the_inputs_run() {
    eprintln!("hostile inputs run without a panic so far in this process: {}", INPUTS.load(Ordering::Relaxed));
}
