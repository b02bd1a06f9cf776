//! pyft's NF4 quantizer against bitsandbytes 0.50.2's own output (`tests/data/nf4/`, see its
//! README): packed bytes and block scales exactly, nested codes under both backend rules given
//! bitsandbytes' offset, and dequantized values bit for bit.

use std::path::{Path, PathBuf};

use pyft_core::nf4::dequant::{dequantize_into, rebuild_absmax};
use pyft_core::nf4::tables::CODE8;
use pyft_core::nf4::{double_quantize, mean_offset, quantize, Compat, Nf4Layout, Nf4Meta};
use pyft_core::tensor::{encode_into, DType};
use safetensors::SafeTensors;
use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nf4")
}

struct Vectors {
    bytes: Vec<u8>,
    manifest: Value,
}

impl Vectors {
    fn load() -> Vectors {
        let bytes = std::fs::read(data_dir().join("nf4_vectors.safetensors")).unwrap();
        let manifest = serde_json::from_str(&std::fs::read_to_string(data_dir().join("manifest.json")).unwrap()).unwrap();
        Vectors { bytes, manifest }
    }

    fn tensor(&self, key: &str) -> (Vec<u8>, DType) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("no tensor {key}"));
        let dtype = match t.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            _ => DType::F32, // u8 tensors: the dtype is unused
        };
        (t.data().to_vec(), dtype)
    }

    fn f32s(&self, key: &str) -> Vec<f32> {
        self.tensor(key).0.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    fn cases(&self) -> Vec<(String, Value)> {
        self.manifest["cases"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn layout_of(meta: &Value) -> Nf4Layout {
    Nf4Layout::new(meta["n"].as_u64().unwrap() as usize, meta["blocksize"].as_u64().unwrap() as usize).unwrap()
}

fn quantize_case(v: &Vectors, case: &str, layout: Nf4Layout, compat: Compat) -> (Vec<u8>, Vec<f32>) {
    let (input, dtype) = v.tensor(&format!("{case}.input"));
    let mut packed = vec![0u8; layout.packed_len()];
    let mut absmax = vec![0f32; layout.blocks()];
    quantize(&input, dtype, layout, compat, &mut packed, &mut absmax).unwrap();
    (packed, absmax)
}

#[test]
fn packed_bytes_and_scales_equal_bitsandbytes() {
    let v = Vectors::load();
    for (case, meta) in v.cases() {
        let (packed, absmax) = quantize_case(&v, &case, layout_of(&meta), Compat::BnbCpu);
        assert!(packed == v.tensor(&format!("{case}.packed")).0, "{case}: packed");
        assert!(packed == v.tensor(&format!("{case}.dq.packed")).0, "{case}: dq.packed");
        assert!(bits(&absmax) == bits(&v.f32s(&format!("{case}.absmax"))), "{case}: absmax");
    }
}

#[test]
fn nested_codes_follow_each_backend_rule() {
    let v = Vectors::load();
    for (case, meta) in v.cases() {
        let layout = layout_of(&meta);
        let (_, absmax) = quantize_case(&v, &case, layout, Compat::BnbCpu);
        let offset = v.f32s(&format!("{case}.dq.offset"))[0];
        let ours = mean_offset(&absmax);
        assert!((ours.to_bits() as i64 - offset.to_bits() as i64).abs() <= 1, "{case}: offset {ours} vs {offset}");
        let cpu = double_quantize(&absmax, offset, Compat::BnbCpu);
        assert!(cpu.q8 == v.tensor(&format!("{case}.dq.absmax_u8")).0, "{case}: CPU-table codes");
        assert_eq!(bits(&cpu.nested_absmax), bits(&v.f32s(&format!("{case}.dq.nested_absmax"))), "{case}");
        let cuda = double_quantize(&absmax, offset, Compat::BnbCuda);
        assert!(cuda.q8 == v.tensor(&format!("{case}.dq.absmax_u8_cuda_rule")).0, "{case}: CUDA-rule codes");
        assert_eq!(bits(&v.f32s(&format!("{case}.dq.nested_quant_map"))), bits(&CODE8), "{case}: CODE8");
    }
}

#[test]
fn dequantized_values_equal_bitsandbytes() {
    let v = Vectors::load();
    for (case, meta) in v.cases() {
        let layout = layout_of(&meta);
        let (packed, _) = v.tensor(&format!("{case}.packed"));
        let (_, dtype) = v.tensor(&format!("{case}.input"));
        let (want, _) = v.tensor(&format!("{case}.dequant"));
        let dequant = |absmax: &[f32]| {
            let mut out = vec![0f32; layout.n];
            dequantize_into(&packed, absmax, layout, 0, &mut out).unwrap();
            let mut bytes = vec![0u8; layout.n * dtype.size()];
            encode_into(&out, dtype, &mut bytes);
            bytes
        };
        assert!(dequant(&v.f32s(&format!("{case}.absmax"))) == want, "{case}: dequant");
        let q8 = v.tensor(&format!("{case}.dq.absmax_u8")).0;
        let rebuilt = rebuild_absmax(
            &q8,
            &v.f32s(&format!("{case}.dq.nested_absmax")),
            &v.f32s(&format!("{case}.dq.nested_quant_map")),
            v.f32s(&format!("{case}.dq.offset"))[0],
        )
        .unwrap();
        assert_eq!(bits(&rebuilt), bits(&v.f32s(&format!("{case}.dq.absmax_dequant"))), "{case}: rebuilt absmax");
        assert!(dequant(&rebuilt) == v.tensor(&format!("{case}.dq.dequant")).0, "{case}: dq.dequant");
    }
}

#[test]
fn json_blobs_equal_bitsandbytes() {
    let v = Vectors::load();
    for (case, meta) in v.cases() {
        let (_, dtype) = v.tensor(&format!("{case}.input"));
        let shape: Vec<usize> = meta["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let blocksize = meta["blocksize"].as_u64().unwrap() as usize;
        let plain = Nf4Meta { blocksize, dtype, shape, nested_offset: None };
        assert_eq!(plain.to_json(), meta["quant_state_json"].as_str().unwrap(), "{case}");
        let offset = v.f32s(&format!("{case}.dq.offset"))[0];
        let nested = Nf4Meta { nested_offset: Some(offset), ..plain };
        assert_eq!(nested.to_json(), meta["quant_state_json_dq"].as_str().unwrap(), "{case}");
    }
}

#[test]
fn worked_example_d_and_cuda_corners() {
    let v = Vectors::load();
    let layout = Nf4Layout::new(4096, 64).unwrap();
    let (packed, absmax) = quantize_case(&v, "f32_64x64_bs64", layout, Compat::BnbCpu);
    let hex: String = packed[..32].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, v.manifest["worked_example"]["packed_hex"].as_str().unwrap());
    assert_eq!(absmax[0].to_bits(), 0x3d31cdfb);
    // All-zero blocks: bitsandbytes' CUDA kernel packs 0x00 where its CPU path packs 0x77.
    let zero = Nf4Layout::new(128, 64).unwrap();
    let (cpu, _) = quantize_case(&v, "f32_all_zero_bs64", zero, Compat::BnbCpu);
    let (cuda, cuda_absmax) = quantize_case(&v, "f32_all_zero_bs64", zero, Compat::BnbCuda);
    assert!(cpu.iter().all(|&b| b == 0x77) && cuda.iter().all(|&b| b == 0));
    assert_eq!(cuda_absmax, [0.0, 0.0]);
    // Elsewhere the CUDA mode packs the same bytes (no value sits within an ulp of a threshold).
    for case in ["f32_64x64_bs64", "f32_threshold_probe_bs64", "bf16_1024x1024_bs64"] {
        let meta = &v.manifest["cases"][case];
        let (c, _) = quantize_case(&v, case, layout_of(meta), Compat::BnbCuda);
        assert!(c == v.tensor(&format!("{case}.packed")).0, "{case}");
    }
}

#[test]
fn non_finite_values_are_rejected_with_their_index() {
    let mut x = vec![0.5f32; 100];
    x[70] = f32::NAN;
    let src: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let layout = Nf4Layout::new(100, 64).unwrap();
    let (mut packed, mut absmax) = (vec![0u8; 50], vec![0f32; 2]);
    let e = quantize(&src, DType::F32, layout, Compat::BnbCpu, &mut packed, &mut absmax).unwrap_err().to_string();
    assert!(e.contains("element 70"), "{e}");
    assert!(Nf4Layout::new(100, 48).is_err() && Nf4Layout::new(0, 64).is_err());
    assert!(quantize(&src, DType::F32, layout, Compat::BnbCpu, &mut packed[..49], &mut absmax).is_err());
}
