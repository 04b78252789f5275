//! Frame encoding by payload size: the cost paid once per published message (never per
//! recipient), for JSON payloads embedded verbatim and for text that must be escaped.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::message::encode_frame;
use herald_proto::frame::Source;

fn json_payload(size: usize) -> Vec<u8> {
    // {"items":"xxxx…"} padded to `size` bytes.
    let pad = size.saturating_sub(12);
    format!(r#"{{"items":"{}"}}"#, "x".repeat(pad)).into_bytes()
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_frame");
    for size in [32usize, 1024, 8192] {
        let json = json_payload(size);
        let text = vec![b'a'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("json", size), &json, |b, p| {
            b.iter(|| {
                encode_frame(
                    "0192f1c3-msg",
                    "0192f1c3-msg",
                    Source::User,
                    None,
                    Some("order"),
                    p,
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("text", size), &text, |b, p| {
            b.iter(|| {
                encode_frame(
                    "0192f1c3-msg",
                    "0192f1c3-msg",
                    Source::Broadcast,
                    None,
                    None,
                    p,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encoding);
criterion_main!(benches);
