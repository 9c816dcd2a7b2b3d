//! Replay throughput on one thread: decode → processors → encode, in memory.
//!
//! `cargo bench --bench replay`. The input is the Monday-morning surge at 4× scale (requests,
//! outcomes and telemetry as JSON lines); the output goes to a sink after being encoded.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use surgeguard::config::Config;
use surgeguard::replay::replay;
use surgeguard::scenario::{Surge, monday_surge};

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
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
