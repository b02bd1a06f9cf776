//! Criterion benchmark of NF4: quantizing a 4096 × 11008 bf16 matrix of Gaussian weights
//! (σ = 0.02; the shape of a 7B model's MLP projection) at blocksize 64, with and without double
//! quantization of the scales, and dequantizing it back to f32, in values/s.
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pyft_core::data::split::SplitMix64;
use pyft_core::nf4::dequant::dequantize_into;
use pyft_core::nf4::{double_quantize, mean_offset, quantize, Compat, Nf4Layout};
use pyft_core::tensor::{from_f32, DType};

const ROWS: usize = 4096;
const COLS: usize = 11008;

fn gaussian_bf16(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut uniform = move || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let x: Vec<f32> = (0..ROWS * COLS)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * 0.02) as f32
        })
        .collect();
    from_f32(&x, DType::BF16)
}

fn bench_nf4(c: &mut Criterion) {
    let src = gaussian_bf16(7);
    let layout = Nf4Layout::new(ROWS * COLS, 64).unwrap();
    let mut packed = vec![0u8; layout.packed_len()];
    let mut absmax = vec![0f32; layout.blocks()];
    let mut group = c.benchmark_group("nf4_4096x11008_bf16");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements((ROWS * COLS) as u64));
    for double_quant in [false, true] {
        let id = if double_quant { "quantize_dq" } else { "quantize" };
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                quantize(&src, DType::BF16, layout, Compat::BnbCpu, &mut packed, &mut absmax).unwrap();
                if double_quant {
                    std::hint::black_box(double_quantize(&absmax, mean_offset(&absmax), Compat::BnbCpu));
                }
            })
        });
    }
    let mut out = vec![0f32; ROWS * COLS];
    group.bench_function(BenchmarkId::from_parameter("dequantize_f32"), |b| {
        b.iter(|| dequantize_into(&packed, &absmax, layout, 0, &mut out).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_nf4);
criterion_main!(benches);
