//! Merge kernel throughput: one bf16 weight block with an r=16 LoRA delta folded in
//! (`merge_rows`: decode, `W + s·(B@A)` with FMA, round once), and the f32 `add_product` used for
//! DoRA and multi-adapter merges. Shapes of the 0.76B bench model (hidden 2048, intermediate 5632).
//!
//! Run: `cargo bench -p pyft-core --bench merge`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pyft_core::merge::lora::{add_product, merge_rows};
use pyft_core::tensor::{from_f32, DType};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 - 0.5) * 0.04
        })
        .collect()
}

fn bench_merge(c: &mut Criterion) {
    let r = 16;
    let mut group = c.benchmark_group("merge");
    group.sample_size(10);
    for (out, inp) in [(2048usize, 2048usize), (5632, 2048), (2048, 5632)] {
        let w = from_f32(&values(out * inp, 1), DType::BF16);
        let b = values(out * r, 2);
        let a = values(r * inp, 3);
        group.throughput(Throughput::Elements((out * inp) as u64));
        group.bench_with_input(BenchmarkId::new("merge_rows_bf16_r16", format!("{out}x{inp}")), &(), |bench, _| {
            let mut dst = vec![0u8; w.len()];
            let mut scratch = Vec::new();
            bench.iter(|| merge_rows(&w, DType::BF16, &mut dst, DType::BF16, inp, Some((&b, &a, 2.0)), &mut scratch));
        });
        let wf = values(out * inp, 4);
        group.bench_with_input(BenchmarkId::new("add_product_f32_r16", format!("{out}x{inp}")), &(), |bench, _| {
            let mut weight = wf.clone();
            bench.iter(|| add_product(&mut weight, out, inp, &b, &a, r, 2.0, None));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_merge);
criterion_main!(benches);
