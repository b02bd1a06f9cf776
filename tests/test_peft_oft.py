"""OFT against HF PEFT's OFT: logits and gradients (r / oft_block_size, COFT, block sharing, exact Cayley and
Cayley–Neumann), adapters saved by either loaded by the other, merging equal to `merge_and_unload` (float32
and bfloat16), training through the decoder on packed rows, generation, and NF4 bases against PEFT on a
bitsandbytes model; on tiny Llama and Qwen2 (GQA, biased q/k/v) models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pyft.peft import OftConfig, adapters_disabled, apply_oft, load_adapter, merge_oft, save_oft_adapter
from pyft.peft.oft import cayley, oft_modules, resolve_blocks, skew_symmetric
from pyft.testing import make_tiny_model

# down_proj has in_features 176 (11 blocks of 16, or 4 of 44): blocks of two sizes in one model
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
#: variant → OFTConfig / OftConfig keyword arguments (the same names on both sides)
VARIANTS = {
    "block16": {"oft_block_size": 16},
    "r4": {"r": 4, "oft_block_size": 0},
    # block norms are 0.38 to 0.52 here: the radius eps/sqrt(n) (0.48 for q/k/v/o's 4 blocks, 0.29 for
    # down_proj's 11) cuts some blocks and not others
    "coft": {"oft_block_size": 16, "coft": True, "eps": 0.96},
    "exact": {"oft_block_size": 16, "use_cayley_neumann": False},
    "exact_coft_share": {"oft_block_size": 16, "use_cayley_neumann": False, "coft": True, "eps": 0.48,
                         "block_share": True},
    "share_r4": {"r": 4, "oft_block_size": 0, "block_share": True},
    "neumann3": {"oft_block_size": 8, "num_cayley_neumann_terms": 3},
    "neumann8": {"oft_block_size": 8, "num_cayley_neumann_terms": 8},
}
IDS = torch.tensor([[5, 17, 9, 200, 31, 44, 8, 3], [7, 7, 120, 64, 2, 90, 11, 5]])


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tokenizer_dirs, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("oft") / request.param, tokenizer_dirs["chatml"],
                           arch=request.param)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def _base(model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)


def _peft(model_dir, out_dir, variant: str, dtype=torch.float32):
    """PEFT's OFT with random rotations (init_weights=False draws N(0, 0.1²); scaled to std 0.03, a trained
    adapter's range), saved to ``out_dir``."""
    from peft import OFTConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_base(model_dir, dtype), OFTConfig(target_modules=TARGETS, init_weights=False,
                                                              task_type="CAUSAL_LM", **VARIANTS[variant]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "oft_R" in n:
                p.mul_(0.3)
    model.save_pretrained(out_dir)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _peft_grads(model) -> dict[str, torch.Tensor]:
    return {n.removeprefix("base_model.model.").replace(".default", ""): p.grad
            for n, p in model.named_parameters() if "oft_R" in n}


# fp32 on both sides and the same operations (the rotation in float32, then the same matmul): measured
# differences are 0 to a few ulps; 1e-6 relative leaves room for summation order and nothing more.
TOL = 1e-6


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_peft_adapter_loads_with_equal_logits_and_gradients(model_dir, tmp_path, variant):
    ref = _peft(model_dir, tmp_path / "peft", variant)
    ours = _base(model_dir)
    adapted = load_adapter(ours, tmp_path / "peft", trainable=True)
    assert len(adapted) == 2 * len(TARGETS)
    ref.train()
    ours.train()
    lo, lr = ours(input_ids=IDS, labels=IDS), ref(input_ids=IDS, labels=IDS)
    assert _rel(lo.logits, lr.logits) <= TOL
    lo.loss.backward()
    lr.loss.backward()
    grads_ref = _peft_grads(ref)
    grads_ours = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(grads_ours) == set(grads_ref) and all(n.endswith(".oft_R.weight") for n in grads_ours)
    for name, g in grads_ours.items():
        assert g is not None and g.abs().max() > 0, name
        assert _rel(g, grads_ref[name]) <= TOL, name
    # COFT projects the parameter in place during the forward, on both sides alike
    want = {n.removeprefix("base_model.model.").replace(".default", ""): p for n, p in ref.named_parameters()
            if "oft_R" in n}
    saved = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    cut = []
    for name, p in ours.named_parameters():
        if p.requires_grad:
            assert _rel(p, want[name]) <= TOL, name
            cut.append((p != saved[f"base_model.model.{name}"]).any(dim=1))
    cut = torch.cat(cut)
    if VARIANTS[variant].get("coft"):
        assert 0 < cut.sum() < len(cut), "the radius must cut some blocks and leave others"
    else:
        assert not cut.any()
    with torch.no_grad():
        assert _rel(ours(input_ids=IDS).logits, _base(model_dir)(input_ids=IDS).logits) > 1e-4, "no effect"


@pytest.mark.parametrize("variant", ["r4", "coft", "exact"])
def test_pyft_adapter_loads_in_peft(model_dir, tmp_path, variant):
    from peft import PeftModel

    ours = _base(model_dir)
    torch.manual_seed(1)
    apply_oft(ours, OftConfig(targets=TARGETS, init_weights=False, **VARIANTS[variant]))
    with torch.no_grad():
        for _, layer in oft_modules(ours):
            layer.oft_R.weight.mul_(0.3)
    save_oft_adapter(ours, tmp_path / "ours", base_model_name_or_path=str(model_dir))
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "OFT" and cfg["target_modules"] == sorted(TARGETS)
    assert {k: cfg[k] for k in VARIANTS[variant]} == VARIANTS[variant]
    ref = PeftModel.from_pretrained(_base(model_dir), tmp_path / "ours").eval()
    ours.eval()
    with torch.no_grad():
        got = ours(input_ids=IDS).logits
        assert _rel(got, ref(input_ids=IDS).logits) <= TOL
        assert _rel(got, _base(model_dir)(input_ids=IDS).logits) > 1e-4, "the adapter must change the logits"


@pytest.mark.parametrize("variant", ["block16", "r4", "coft", "exact_coft_share", "neumann3"])
def test_merge_equals_peft_merge_and_unload(model_dir, tmp_path, variant):
    ref = _peft(model_dir, tmp_path / "peft", variant)
    with torch.no_grad():
        ref(input_ids=IDS)  # as on pyft's side below: COFT's projection, run twice, moves a cut block by an ulp
    ref = ref.merge_and_unload()
    ours = _base(model_dir)
    load_adapter(ours, tmp_path / "peft")
    with torch.no_grad():
        before = ours(input_ids=IDS).logits
    merge_oft(ours)
    assert not list(oft_modules(ours)) and not hasattr(ours, "pyft_oft_config")
    want = ref.state_dict()
    assert set(ours.state_dict()) == set(want)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, want[name]), name  # torch.mm(BD, Wᵀ)ᵀ in float32 on both sides: same bits
    with torch.no_grad():
        # W BDᵀ rounded once vs rotating x then W: float32 rounding only
        assert _rel(ours(input_ids=IDS).logits, before) <= 1e-5


def test_merge_in_bfloat16_equals_peft(model_dir, tmp_path):
    """A bfloat16 base: PEFT keeps the adapter in float32 and merges in float32, cast once; so does pyft
    (the brief allows 1 ulp; it is bit-equal)."""
    from peft import PeftModel

    _peft(model_dir, tmp_path / "peft", "coft")
    ref = PeftModel.from_pretrained(_base(model_dir, torch.bfloat16), tmp_path / "peft")
    assert all(p.dtype == torch.float32 for n, p in ref.named_parameters() if "oft_R" in n)
    ours = _base(model_dir, torch.bfloat16)
    load_adapter(ours, tmp_path / "peft")
    with torch.no_grad():
        assert _rel(ours(input_ids=IDS).logits, ref(input_ids=IDS).logits) <= 1e-2  # bf16 activations
    ref = ref.merge_and_unload()
    merge_oft(ours)
    want = ref.state_dict()
    for name, tensor in ours.state_dict().items():
        assert tensor.dtype == want[name].dtype, name
        assert torch.equal(tensor, want[name]), name


def test_identity_at_init_and_adapters_can_be_disabled(model_dir):
    ours = _base(model_dir)
    with torch.no_grad():
        plain = ours(input_ids=IDS).logits
    apply_oft(ours, OftConfig(targets=TARGETS, oft_block_size=16))
    assert all(n.endswith("oft_R.weight") for n, p in ours.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.equal(ours(input_ids=IDS).logits, plain)  # zeros → R = I exactly
        for _, layer in oft_modules(ours):
            layer.oft_R.weight.normal_(0.0, 0.03)
        assert not torch.equal(ours(input_ids=IDS).logits, plain)
        with adapters_disabled(ours):
            assert torch.equal(ours(input_ids=IDS).logits, plain)


def test_rotations_are_orthogonal_and_the_two_cayley_forms_are_transposes():
    torch.manual_seed(0)
    vec = torch.randn(3, 28, dtype=torch.float64) * 0.01
    exact = cayley(vec, 8, use_cayley_neumann=False)
    eye = torch.eye(8, dtype=torch.float64)
    assert torch.allclose(exact @ exact.transpose(-1, -2), eye.expand(3, 8, 8), atol=1e-12)
    q = skew_symmetric(vec, 8)
    assert torch.equal(q, -q.transpose(-1, -2)) and q[0, 0, 1] == vec[0, 0] and q[0, 1, 2] == vec[0, 7]
    # the Neumann series truncates (I + Q)(I - Q)^-1 = exactᵀ: 8 terms leave an error of order |Q|^7
    assert torch.allclose(cayley(vec, 8, True, 8), exact.transpose(-1, -2), atol=1e-10)
    assert not torch.allclose(cayley(vec, 8, True, 8), exact, atol=1e-3)


def test_config_errors(model_dir):
    with pytest.raises(ValueError, match=r"r \(4\) and oft_block_size \(32\) are both set"):
        OftConfig(r=4)
    with pytest.raises(ValueError, match="r and oft_block_size are both 0"):
        OftConfig(r=0, oft_block_size=0)
    with pytest.raises(ValueError, match="module_dropout"):
        OftConfig(module_dropout=1.0)
    with pytest.raises(ValueError, match="num_cayley_neumann_terms"):
        OftConfig(num_cayley_neumann_terms=1)
    with pytest.raises(ValueError, match="eps"):
        OftConfig(coft=True, eps=0.0)
    ours = _base(model_dir)
    with pytest.raises(ValueError, match=r"oft_block_size: 24 does not divide in_features 64 of "
                                         r"`model.layers.0.self_attn.q_proj`"):
        apply_oft(ours, OftConfig(oft_block_size=24))
    with pytest.raises(ValueError, match=r"r: 3 does not divide in_features 64"):
        apply_oft(ours, OftConfig(r=3, oft_block_size=0))
    assert all(p.requires_grad for p in ours.parameters()), "a refused config leaves the model alone"
    with pytest.raises(ValueError, match="is a Embedding; pyft applies OFT"):
        apply_oft(ours, OftConfig(targets=["embed_tokens"]))


def test_peft_adapter_with_a_rounded_block_size_loads(model_dir, tmp_path):
    """PEFT rounds a block size that does not divide a layer (with a warning) and saves the size asked for;
    pyft loads such a file with the same rounding (and warning), where apply_oft refuses the size."""
    from peft import OFTConfig, get_peft_model

    with pytest.warns(UserWarning, match="Invalid `oft_block_size`"):
        ref = get_peft_model(_base(model_dir), OFTConfig(target_modules=["q_proj", "down_proj"], oft_block_size=24,
                                                         init_weights=False))
    ref.save_pretrained(tmp_path / "peft")
    ours = _base(model_dir)
    with pytest.warns(UserWarning, match="oft_block_size 24 does not divide in_features of 4 layer"):
        load_adapter(ours, tmp_path / "peft")
    assert {layer.oft_R.block_size for _, layer in oft_modules(ours)} == {16, 22}  # 64 → 16 (tie: lower), 176 → 22
    assert resolve_blocks(176, 0, 44) == (4, 44)
    ref.eval()
    with torch.no_grad():
        assert _rel(ours(input_ids=IDS).logits, ref(input_ids=IDS).logits) <= TOL


def test_refuses_unsupported_peft_files(model_dir, tmp_path):
    from pyft.io.files import read_json_object

    _peft(model_dir, tmp_path / "a", "block16")
    path = tmp_path / "a" / "adapter_config.json"
    raw = read_json_object(path)
    for change, field in [({"bias": "all"}, "bias"), ({"fan_in_fan_out": True}, "fan_in_fan_out"),
                          ({"r": 4}, "r"), ({"coft": "yes"}, "coft")]:
        path.write_text(json.dumps({**raw, **change}))
        with pytest.raises(ValueError, match=f"adapter_config.json: .*`?{field}`?"):
            load_adapter(_base(model_dir), tmp_path / "a")
    # modules_to_save are loaded (pyft.peft.saved_modules); named but absent from the file, they are refused
    path.write_text(json.dumps({**raw, "modules_to_save": ["lm_head"]}))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: modules_to_save .* missing `lm_head.weight`"):
        load_adapter(_base(model_dir), tmp_path / "a")
    path.write_text(json.dumps({k: v for k, v in raw.items() if k != "oft_block_size"}))
    with pytest.raises(ValueError, match="PEFT < 0.14"):
        load_adapter(_base(model_dir), tmp_path / "a")


def test_adamw_through_the_decoder_on_packed_rows_reduces_the_loss(model_dir):
    """The training path: hidden states from `model.get_decoder()` on packed rows (positions restarting at
    each document, no attention mask), then the output layer; a few AdamW steps lower the loss."""
    import torch.nn.functional as F

    model = _base(model_dir)
    apply_oft(model, OftConfig(targets=TARGETS, oft_block_size=16, coft=True, eps=1.0))
    model.train()
    ids = torch.tensor([[5, 17, 9, 200, 31, 44, 8, 3, 7, 7, 120, 64], [2, 90, 11, 5, 66, 12, 13, 14, 15, 99, 3, 4]])
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-2)

    def loss_fn():
        hidden = model.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden)[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = loss_fn().item()
    assert final < losses[0] - 0.05, losses + [final]
    # COFT keeps each block within its radius after the steps (the next forward projected them)
    for _, layer in oft_modules(model):
        rot = layer.oft_R
        radius = 1.0 / rot.weight.shape[0] ** 0.5
        norms = skew_symmetric(rot.weight.detach(), rot.block_size).flatten(1).norm(dim=1)
        assert (norms <= radius * (1 + 1e-5)).all()


def test_module_dropout_sets_blocks_to_identity_in_training_only():
    from torch import nn

    from pyft.peft.oft import OftLinear

    base = nn.Linear(32, 8)
    layer = OftLinear(base, OftConfig(oft_block_size=4, module_dropout=0.5, init_weights=False))
    x = torch.randn(3, 32)
    layer.eval()
    with torch.no_grad():
        full = layer(x)
        layer.train()
        torch.manual_seed(0)
        dropped = layer(x)
        # exactly int(0.5 * 8) = 4 blocks are the identity: their slice of the rotated input is x itself
        blocks = layer.oft_R._dropped(layer.oft_R.rotations())
    eye = torch.eye(4)
    assert sum(torch.equal(b, eye) for b in blocks) == 4
    assert not torch.equal(full, dropped)


def test_generate_with_an_oft_adapter_equals_peft(model_dir, tmp_path):
    """`pyft generate --adapter` takes an OFT adapter: greedy tokens equal PEFT's model.generate."""
    from pyft.generate import Generator, SamplingSettings
    from pyft.generate.prompts import Prompt

    ref = _peft(model_dir, tmp_path / "peft", "coft").eval()
    gen = Generator(model_dir, adapter=tmp_path / "peft", dtype="float32")
    chat = [{"role": "user", "content": "Hello there"}]
    got = gen.complete([Prompt(messages=chat)], SamplingSettings(max_new_tokens=8))[0]
    ids = torch.tensor([gen.encode(gen.prompt_text(Prompt(messages=chat)), chat=True)])
    with torch.no_grad():
        want = ref.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=gen.eos_token_ids,
                            pad_token_id=gen.pad_token_id)[0, ids.shape[1]:].tolist()
    end = next((i for i, t in enumerate(want) if t in gen.eos_token_ids), None)
    assert got.token_ids == (want if end is None else want[:end + 1])


def test_nf4_base_matches_peft_on_bitsandbytes(model_dir, tmp_path):
    """PEFT applies OFT to bitsandbytes 4-bit layers; pyft to NF4Linear built from the same tensors: equal
    logits and gradients, and merging gives a dense layer holding dequant(W) BDᵀ."""
    bnb = pytest.importorskip("bitsandbytes")
    from peft import OFTConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from pyft.peft._inject import replace_module
    from pyft.quant import NF4Linear

    def bnb_model():
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=cfg, dtype=torch.float32,
                                                     local_files_only=True)
        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = False  # the same default code path on every CPU
        return model

    torch.manual_seed(0)
    ref = get_peft_model(bnb_model(), OFTConfig(target_modules=TARGETS, init_weights=False, **VARIANTS["coft"]))
    ref.save_pretrained(tmp_path / "peft")
    ours = _base(model_dir)
    for name, module in bnb_model().named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            replace_module(ours, name, NF4Linear.from_bnb_state_dict(module.state_dict(), compute_dtype=torch.float32))
    load_adapter(ours, tmp_path / "peft", trainable=True)
    assert all(isinstance(layer.base_layer, NF4Linear) for _, layer in oft_modules(ours))
    ref.train()
    ours.train()
    lo, lr = ours(input_ids=IDS, labels=IDS), ref(input_ids=IDS, labels=IDS)
    assert _rel(lo.logits, lr.logits) <= TOL  # the same dequantized weights and the same float32 ops
    lo.loss.backward()
    lr.loss.backward()
    grads_ref = _peft_grads(ref)
    grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(grads) == set(grads_ref)
    for name, g in grads.items():
        assert _rel(g, grads_ref[name]) <= TOL, name
    with torch.no_grad():
        before = ours(input_ids=IDS).logits
        expected = {name: layer.merged_weight() for name, layer in oft_modules(ours)}
        merge_oft(ours)
        for name, weight in expected.items():
            layer = ours.get_submodule(name)
            assert type(layer) is torch.nn.Linear and torch.equal(layer.weight, weight), name
        assert _rel(ours(input_ids=IDS).logits, before) <= 1e-5
