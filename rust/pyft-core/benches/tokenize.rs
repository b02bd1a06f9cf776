//! Single-thread encode throughput: pyft's fast BPE paths vs the `tokenizers` crate.
//!
//! Input: `tests/data/tokenizers/chat_sample.txt` (ChatML conversations: English, code, numbers, some
//! CJK / Arabic / emoji / accented Latin), encoded one conversation at a time with special tokens.
//! `warm`: tokenizers reused across iterations (word caches filled, the steady state of a long data
//! run); `cold`: fresh tokenizers every iteration (loading not timed). Tokens per iteration are printed
//! so that bytes/s converts to tokens/s.
//!
//! Run: `cargo bench -p pyft-core --bench tokenize`

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pyft_core::data::tokenize::{Backend, Tokenizer};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizers")
}

fn encode_all(tok: &Tokenizer, texts: &[&str]) -> usize {
    texts.iter().map(|t| tok.encode(t, true).expect("encode").ids.len()).sum()
}

fn hf_encode_all(tok: &tokenizers::Tokenizer, texts: &[&str]) -> usize {
    texts.iter().map(|t| tok.encode(*t, true).expect("encode").len()).sum()
}

fn hf_encode_fast_all(tok: &tokenizers::Tokenizer, texts: &[&str]) -> usize {
    texts.iter().map(|t| tok.encode_fast(*t, true).expect("encode").len()).sum()
}

fn bench(c: &mut Criterion) {
    let sample = std::fs::read_to_string(data_dir().join("chat_sample.txt")).expect("chat sample");
    let texts: Vec<&str> = sample.split("\n\n\n").collect();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();

    // o200k: a Split regex without a hand-written scanner (runs on Oniguruma, BPE still fast).
    // spm_llama: SentencePiece-style (Llama 2) BPE, each text piece one word for HF, cut between words
    // here. Real vocabularies: `tools/bench_tokenize.py`.
    for name in ["llama3", "qwen2", "gpt2", "o200k", "spm_llama"] {
        let json = std::fs::read_to_string(data_dir().join(format!("{name}.json"))).expect("fixture");
        let start = Instant::now();
        let ours = Tokenizer::from_json(&json).expect("load");
        let load = start.elapsed();
        assert_eq!(ours.backend(), Backend::FastBpe, "{name}");
        let start = Instant::now();
        let hf = tokenizers::Tokenizer::from_str(&json).expect("load");
        let hf_load = start.elapsed();
        let start = Instant::now();
        ours.encode("warm up: builds the class table once per process", false).expect("encode");
        eprintln!("{name}: load {load:.1?} (of which hf {hf_load:.1?}), first encode {:.1?}", start.elapsed());
        let tokens = encode_all(&ours, &texts);
        assert_eq!(tokens, hf_encode_all(&hf, &texts));
        eprintln!(
            "{name}: {bytes} bytes, {tokens} tokens per iteration ({:.2} bytes/token)",
            bytes as f64 / tokens as f64
        );

        let mut group = c.benchmark_group(format!("tokenize/{name}"));
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function("pyft-warm", |b| b.iter(|| encode_all(&ours, &texts)));
        group.bench_function("hf-encode-warm", |b| b.iter(|| hf_encode_all(&hf, &texts)));
        group.bench_function("hf-encode_fast-warm", |b| b.iter(|| hf_encode_fast_all(&hf, &texts)));
        if name == "llama3" {
            group.sample_size(20);
            group.bench_function("pyft-cold", |b| {
                b.iter_batched_ref(
                    || Tokenizer::from_json(&json).expect("load"),
                    |t| encode_all(t, &texts),
                    BatchSize::PerIteration,
                )
            });
            group.bench_function("hf-encode-cold", |b| {
                b.iter_batched_ref(
                    || tokenizers::Tokenizer::from_str(&json).expect("load"),
                    |t| hf_encode_all(t, &texts),
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
