//! A bitsandbytes-format NF4 checkpoint (written here from pyft's own bnb-exact quantizer, state in
//! another shard than the weights) as a merge source: quant state hidden, each weight one tensor
//! of its recorded dtype and shape holding `dequantize_4bit`'s values (spec `nf4.md` §3.3),
//! streamed rows identical to whole reads, and clear errors for broken or unsupported checkpoints.
//! tests/test_io_merge_nf4.py checks the same against bitsandbytes, PEFT and transformers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pyft_core::merge::{merge_model, AdapterInput, Combine, MergeOptions, MergedModel};
use pyft_core::nf4::tables::{CODE8, NF4_CODE};
use pyft_core::nf4::{double_quantize, mean_offset, quantize, Compat, Nf4Layout, Nf4Meta};
use pyft_core::tensor::{from_f32, to_f32, DType};
use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
use serde_json::{json, Value};

const DQ: &str = "model.layers.0.mlp.down_proj.weight";
const PLAIN: &str = "model.layers.0.self_attn.q_proj.weight";

/// One tensor to write: name, safetensors type, shape, bytes.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);
/// A change to the tensors of [`checkpoint`].
type Edit = Box<dyn Fn(&mut Vec<Raw>)>;

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed;
    (0..n).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as f32 / u32::MAX as f32 - 0.5) * 0.1
    }).collect()
}

/// The packed codes, scales and state tensors of `w` (`shape`, stored as `dtype`), with or
/// without double quantization; the packed bytes viewed as `storage` (bnb_4bit_quant_storage).
fn nf4_tensors(name: &str, w: &[f32], shape: &[usize], dtype: DType, dq: bool, storage: Dtype) -> Vec<Raw> {
    let layout = Nf4Layout::new(w.len(), 64).unwrap();
    let mut packed = vec![0u8; layout.packed_len()];
    let mut absmax = vec![0f32; layout.blocks()];
    quantize(&from_f32(w, dtype), dtype, layout, Compat::BnbCpu, &mut packed, &mut absmax).unwrap();
    let f32_bytes = |v: &[f32]| from_f32(v, DType::F32);
    let itemsize = if storage == Dtype::U8 { 1 } else { 2 };
    let mut out = vec![(name.to_string(), storage, vec![packed.len() / itemsize, 1], packed)];
    let mut meta = Nf4Meta { blocksize: 64, dtype, shape: shape.to_vec(), nested_offset: None };
    if dq {
        let nested = double_quantize(&absmax, mean_offset(&absmax), Compat::BnbCuda);
        meta.nested_offset = Some(nested.offset);
        out.push((format!("{name}.absmax"), Dtype::U8, vec![nested.q8.len()], nested.q8));
        out.push((format!("{name}.nested_absmax"), Dtype::F32, vec![nested.nested_absmax.len()],
                  f32_bytes(&nested.nested_absmax)));
        out.push((format!("{name}.nested_quant_map"), Dtype::F32, vec![256], f32_bytes(&CODE8)));
    } else {
        out.push((format!("{name}.absmax"), Dtype::F32, vec![absmax.len()], f32_bytes(&absmax)));
    }
    out.push((format!("{name}.quant_map"), Dtype::F32, vec![16], f32_bytes(&NF4_CODE)));
    let blob = meta.to_json().into_bytes();
    out.push((format!("{name}.quant_state.bitsandbytes__nf4"), Dtype::U8, vec![blob.len()], blob));
    out
}

/// `dequantize_4bit` by the spec's formula, written out independently of the library.
fn reference(tensors: &[Raw], name: &str, n: usize, dtype: DType, dq: bool) -> Vec<f32> {
    let get = |suffix: &str| {
        let key = if suffix.is_empty() { name.to_string() } else { format!("{name}.{suffix}") };
        tensors.iter().find(|t| t.0 == key).unwrap().3.clone()
    };
    let (packed, absmax) = (get(""), get("absmax"));
    let scale = |b: usize| -> f32 {
        if !dq {
            return to_f32(&absmax, DType::F32)[b];
        }
        let nested = to_f32(&get("nested_absmax"), DType::F32);
        let blob: Value = serde_json::from_slice(&get("quant_state.bitsandbytes__nf4")).unwrap();
        let offset = blob["nested_offset"].as_f64().unwrap() as f32;
        let product = CODE8[absmax[b] as usize] * nested[b / 256];
        product + offset
    };
    let w: Vec<f32> = (0..n).map(|i| {
        let byte = packed[i / 2];
        let code = if i % 2 == 0 { byte >> 4 } else { byte & 15 };
        NF4_CODE[code as usize] * scale(i / 64)
    }).collect();
    to_f32(&from_f32(&w, dtype), dtype)
}

fn write_shard(path: &Path, tensors: &[&Raw]) {
    let views: Vec<(String, TensorView<'_>)> = tensors.iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    serialize_to_file(views, Some(meta), path).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pyft-merge-nf4-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn nf4_config() -> Value {
    json!({"model_type": "llama", "dtype": "bfloat16", "quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": true, "bnb_4bit_compute_dtype": "bfloat16"}})
}

/// Two shards: the packed weights and a norm in the first, every quant-state tensor in the second.
/// `DQ` is bf16 [6, 100] (10 blocks, the last partial) with double quantization; `PLAIN` is f32
/// [4, 64] without, its packed bytes stored as BF16 (quant_storage bfloat16).
fn checkpoint(dir: &Path, config: &Value, edit: impl Fn(&mut Vec<Raw>)) -> Vec<Raw> {
    let mut all = nf4_tensors(DQ, &values(600, 7), &[6, 100], DType::BF16, true, Dtype::U8);
    all.extend(nf4_tensors(PLAIN, &values(256, 9), &[4, 64], DType::F32, false, Dtype::BF16));
    all.push(("model.norm.weight".into(), Dtype::BF16, vec![100], from_f32(&values(100, 3), DType::BF16)));
    edit(&mut all);
    let first = |t: &&Raw| t.0 == DQ || t.0 == PLAIN || t.0 == "model.norm.weight";
    let (a, b): (Vec<&Raw>, Vec<&Raw>) = all.iter().partition(first);
    write_shard(&dir.join("model-00001-of-00002.safetensors"), &a);
    write_shard(&dir.join("model-00002-of-00002.safetensors"), &b);
    let weight_map: serde_json::Map<String, Value> = all.iter()
        .map(|t| (t.0.clone(), json!(if first(&t) { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" })))
        .collect();
    std::fs::write(dir.join("model.safetensors.index.json"), json!({"metadata": {}, "weight_map": weight_map}).to_string())
        .unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    all
}

#[test]
fn nf4_weights_read_as_their_dequantization() {
    let dir = tmp("read");
    let raw = checkpoint(&dir, &nf4_config(), |_| {});
    let model = MergedModel::open(&dir, &[], Combine::Linear).unwrap();
    let mut names: Vec<(&str, &[usize], DType)> =
        model.tensors().iter().map(|t| (t.name.as_str(), t.shape.as_slice(), t.dtype)).collect();
    names.sort_by_key(|t| t.0);
    assert_eq!(names, vec![(DQ, &[6, 100][..], DType::BF16), (PLAIN, &[4, 64][..], DType::F32),
                           ("model.norm.weight", &[100][..], DType::BF16)]);
    assert_eq!(model.dequantized_nf4(), 2);
    assert!(model.config().get("quantization_config").is_none());
    for (name, n, dtype, dq) in [(DQ, 600, DType::BF16, true), (PLAIN, 256, DType::F32, false)] {
        let i = model.tensors().iter().position(|t| t.name == name).unwrap();
        assert!(model.is_nf4(i));
        let v = model.read_f32(i).unwrap();
        let want = reference(&raw, name, n, dtype, dq);
        assert!(v.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}");
        assert!(model.raw(i).is_none() && model.file_range(i, dtype).is_none());
        for out in [DType::BF16, DType::F16, DType::F32] {
            let rows = model.rows(i).unwrap().unwrap();
            let mut bytes = vec![0u8; n * out.size()];
            let row = rows.width() * out.size();
            // Two blocks of rows, as the merge writer streams them.
            rows.fill(0, &mut bytes[..2 * row], out).unwrap();
            rows.fill(2, &mut bytes[2 * row..], out).unwrap();
            assert_eq!(bytes, from_f32(&v, out), "{name} as {out:?}");
        }
    }
    // The whole merge: dense shards, no quantization_config.
    let out = PathBuf::from(format!("{}-merged", dir.display()));
    let report = merge_model(&MergeOptions { base: dir.clone(), adapters: vec![], method: Combine::Linear, out: out.clone(),
                                             dtype: None, max_shard_bytes: 1 << 30, overwrite: false,
                                             extra_files: vec![] }).unwrap();
    assert_eq!((report.tensors, report.dequantized_nf4), (3, 2));
    let mut written_as = report.nf4_written_as.clone();
    written_as.sort();
    assert_eq!(written_as, vec!["bfloat16", "float32"]);
    let file = pyft_core::io::safetensors::SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
    assert_eq!(file.tensors.len(), 3);
    let t = file.get(DQ).unwrap();
    assert_eq!((t.dtype, t.shape.clone()), (DType::BF16, vec![6, 100]));
    assert_eq!(file.bytes(t), from_f32(&reference(&raw, DQ, 600, DType::BF16, true), DType::BF16));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert!(config.get("quantization_config").is_none() && config["dtype"] == "bfloat16");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn broken_and_unsupported_checkpoints_are_named() {
    let cases: Vec<(&str, Value, Edit, String)> = vec![
        ("missing-nested", nf4_config(), Box::new(|t: &mut Vec<Raw>| t.retain(|x| !x.0.ends_with(".nested_absmax"))),
         format!("model-00002-of-00002.safetensors: `{DQ}.quant_state.bitsandbytes__nf4`: the quant state of `{DQ}` \
                  lacks tensor `{DQ}.nested_absmax`")),
        ("blob-shape", nf4_config(), Box::new(|t: &mut Vec<Raw>| {
            let meta = Nf4Meta { blocksize: 64, dtype: DType::BF16, shape: vec![6, 101], nested_offset: Some(0.01) };
            let blob = t.iter_mut().find(|x| x.0 == format!("{DQ}.quant_state.bitsandbytes__nf4")).unwrap();
            blob.3 = meta.to_json().into_bytes();
            blob.2 = vec![blob.3.len()];
         }), format!("model-00001-of-00002.safetensors: `{DQ}`: packed NF4 data is U8 [300, 1] (300 bytes), but its \
                      quant state records shape [6, 101], which needs 303 bytes")),
        ("nested-absmax-shape", nf4_config(), Box::new(|t: &mut Vec<Raw>| {
            let x = t.iter_mut().find(|x| x.0 == format!("{DQ}.nested_absmax")).unwrap();
            x.2 = vec![2];
            x.3 = vec![0; 8];
         }), format!("`{DQ}.nested_absmax`: is F32 [2], but the quant state of `{DQ}` needs F32 [1]")),
        ("no-blob", nf4_config(), Box::new(|t: &mut Vec<Raw>| t.retain(|x| x.0 != format!("{PLAIN}.quant_state.bitsandbytes__nf4"))),
         format!("quant state of `{PLAIN}`, but `{PLAIN}.quant_state.bitsandbytes__nf4` (its JSON blob) is missing")),
        ("fp4", json!({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true,
                                               "bnb_4bit_quant_type": "fp4"}}), Box::new(|_: &mut Vec<Raw>| {}),
         "config.json: `quantization_config.bnb_4bit_quant_type` is `fp4`: pyft dequantizes NF4 only".into()),
        ("int8", json!({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": true}}),
         Box::new(|_: &mut Vec<Raw>| {}), "config.json: `quantization_config.load_in_8bit` is true".into()),
        ("no-config", json!({"model_type": "llama"}), Box::new(|_: &mut Vec<Raw>| {}),
         format!("model-00001-of-00002.safetensors: tensor `{DQ}` has dtype U8; expected F32, F16 or BF16")),
        ("fp4-blob", json!({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true}}),
         Box::new(|t: &mut Vec<Raw>| {
            let blob = t.iter_mut().find(|x| x.0 == format!("{DQ}.quant_state.bitsandbytes__nf4")).unwrap();
            blob.0 = format!("{DQ}.quant_state.bitsandbytes__fp4");
         }), format!("`{DQ}.quant_state.bitsandbytes__fp4`: a bitsandbytes `fp4` quant state: pyft dequantizes NF4 only")),
    ];
    for (name, config, edit, want) in cases {
        let dir = tmp(name);
        checkpoint(&dir, &config, edit);
        let e = MergedModel::open(&dir, &[], Combine::Linear).unwrap_err().to_string();
        assert!(e.contains(&want), "{name}: {e}");
        let out = PathBuf::from(format!("{}-out", dir.display()));
        let opts = MergeOptions { base: dir.clone(), adapters: Vec::<AdapterInput>::new(), method: Combine::Linear,
                                  out: out.clone(), dtype: None, max_shard_bytes: 1 << 30, overwrite: false,
                                  extra_files: vec![] };
        let e = merge_model(&opts).unwrap_err().to_string();
        assert!(e.contains(&want) && !out.exists(), "{name}: {e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
