//! Replay throughput on one thread: decode → processors → encode, in memory.
//!
//! `cargo bench --bench replay`. The input is the Monday-morning surge at 4× scale (requests,
//! outcomes and telemetry as JSON lines); the output goes to a sink after being encoded. Beside it,
//! in the same run, a baseline: the same lines parsed into `serde_json::Value` and dropped.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use surgeguard::apps::replay::replay;
use surgeguard::apps::scenario::{Surge, monday_surge};
use surgeguard::config::Config;

fn bench(c: &mut Criterion) {
    let events = monday_surge(&Surge { scale: 4, ..Surge::default() });
    let mut input = Vec::new();
    for e in &events {
        e.write_tagged_line(&mut input).expect("encodable");
    }
    eprintln!("{} events, {} MiB of JSON lines", events.len(), input.len() >> 20);
    let cfg = Arc::new(Config::default());
    let mut g = c.benchmark_group("replay_surge_x4");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("decode_process_encode", |b| {
        b.iter(|| {
            let s = replay(cfg.clone(), &input[..], std::io::sink(), |_, _| {}).expect("replay");
            assert_eq!(s.events as usize, events.len());
        })
    });
    // A reference measured in the same run, for the machine's speed at the time: parse every line
    // into a serde_json::Value and drop it (no processing, no output).
    g.bench_function("baseline_serde_json_value_parse", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for line in input.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(line).expect("valid JSON");
                n += usize::from(v.is_object());
            }
            assert_eq!(n, events.len());
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
