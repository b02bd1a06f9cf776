//! Criterion benchmark of the ggml quantizers: `quantize_rows` on a 4096 × 4096 f32 matrix of
//! Gaussian weights (σ = 0.02), per type, in values/s (input bytes = 4 × values).
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pyft_core::data::split::SplitMix64;
use pyft_core::gguf::{quantize_rows, GgmlType};

const N: usize = 4096;

fn gaussian_matrix(seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut uniform = move || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (0..N * N)
        .map(|_| {
            // Box-Muller (one of the pair).
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * 0.02) as f32
        })
        .collect()
}

fn bench_quantize(c: &mut Criterion) {
    let x = gaussian_matrix(7);
    let mut group = c.benchmark_group("quantize_rows_4096x4096");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements((N * N) as u64));
    for t in [
        GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
        GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K,
    ] {
        let mut dst = vec![0u8; N * t.row_bytes(N).unwrap()];
        group.bench_with_input(BenchmarkId::from_parameter(t.name()), &x, |b, x| {
            b.iter(|| quantize_rows(t, x, N, &mut dst).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_quantize);
criterion_main!(benches);
