//! Criterion benchmark of best-fit-decreasing packing (documents/s).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pyft_core::data::pack::pack_bfd;
use pyft_core::data::split::SplitMix64;

fn lengths(n: usize, max: u32, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    // Long-tailed, like chat data: most documents short, a few near the limit.
    (0..n).map(|_| {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u) * f64::from(max - 16)) as u32 + 16
    }).collect()
}

fn bench_pack(c: &mut Criterion) {
    let mut group = c.benchmark_group("pack_bfd");
    for &n in &[10_000usize, 100_000, 1_000_000] {
        let l = lengths(n, 2048, 7);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &l, |b, l| b.iter(|| pack_bfd(l, 2048).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench_pack);
criterion_main!(benches);
