//! The RESP parser on the hot path: one RESERVE frame, a pipeline of 16,
//! and an inline command.
//!
//! `cargo bench -p creditd-bench --bench resp`

use creditd::resp::encode;
use creditd::resp::parse::{parse, Frame, Limits, Parsed};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

const RESERVE: &[u8] =
    b"*4\r\n$7\r\nRESERVE\r\n$12\r\nacct:1234567\r\n$10\r\nh:98765432\r\n$1\r\n1\r\n";

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut frame = Frame::new();
    let mut g = c.benchmark_group("resp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_reserve", |b| {
        b.iter(|| {
            let r = parse(black_box(RESERVE), &limits, &mut frame).unwrap();
            assert!(matches!(r, Parsed::Complete { .. }));
            black_box(frame.len())
        })
    });
    let pipeline: Vec<u8> = RESERVE.repeat(16);
    g.throughput(Throughput::Elements(16));
    g.bench_function("parse_pipeline_16", |b| {
        b.iter(|| {
            let mut at = 0;
            while at < pipeline.len() {
                match parse(&pipeline[at..], &limits, &mut frame).unwrap() {
                    Parsed::Complete { consumed } | Parsed::Empty { consumed } => at += consumed,
                    Parsed::Incomplete => unreachable!(),
                }
            }
            black_box(at)
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_inline", |b| {
        b.iter(|| {
            black_box(parse(black_box(b"RESERVE acct:1 h:2 1\r\n"), &limits, &mut frame).unwrap())
        })
    });
    let mut out = Vec::with_capacity(64);
    g.bench_function("encode_integer", |b| {
        b.iter(|| {
            out.clear();
            encode::integer(&mut out, black_box(123_456));
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
