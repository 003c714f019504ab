"""Weight-only int8 / int4 (qwenvl.engine.quant): one linear against fp32, then every family end to end.

Linear tolerance, derived: rounding w to a grid of step D (int8: the row scale; int4: the group scale)
leaves an error uniform in [-D/2, D/2], so y = x @ w.T gets an error of variance sum_k x_k^2 D_k^2 / 12.
The predicted relative error is sqrt(E||dy||^2) / ||y||; the measured one must lie in
[0.7, 1.25] x predicted (+ 0.006 for the bf16 compute: x, the GEMM output and the scales are rounded to
bf16, each <= 2^-9 relative). The lower bound fails a quantization that silently did nothing.

Model tolerances, measured on tiny checkpoints and set with ~2x margin: rms and max |d logits| /
std(logits) (over all positions and the full vocabulary) and top-1 agreement per position; for int4, whose error on
random tiny models is inherently large (~25% of the logit std), the implementation is checked instead
against the same model with every quantized weight dequantized into fp32 ("fake quant").
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from qwenvl import families
from qwenvl.engine import quant as Q
from qwenvl.engine.generate import generate, prefill_embeds
from qwenvl.engine.sampling import SamplingParams
from qwenvl.inputs import ModelInputs
from qwenvl.model.moe import MoeExperts, MoeRouter, SparseMoeBlock
from qwenvl.processing.positions import mrope_positions
from qwenvl.weights import load_model, save_model

BF16_SLACK = 0.006


def predicted_rel_error(lin: Q.QuantLinear, x: torch.Tensor, y_ref: torch.Tensor) -> float:
    k, n = lin.in_features, lin.out_features
    if lin.mode == "int8":
        step = lin.scales[:n].float()[:, None].expand(n, k)
    else:  # scales [Kp/G, Np, 2]: the step of weight (n, j) is scales[j // G, n, 0]
        step = lin.scales[..., 0].float().repeat_interleave(lin.group_size, 0)[:k, :n].T
    var = (x.float() ** 2) @ (step**2 / 12).T  # [M, N]
    return math.sqrt(var.sum()) / y_ref.norm().item()


# (mode, group, tiled): tiled None = the default layout here (our tiled int8 kernel where it builds),
# False = torch's int8 kernel, what a machine without AVX-512 or a compiler runs
LINEARS = [("int8", 0, None), ("int8", 0, False), ("int4", 32, None), ("int4", 64, None), ("int4", 128, None)]


@pytest.mark.parametrize("mode,group,tiled", LINEARS,
                         ids=[f"{m}g{g}" + ("-torch" if t is False else "") for m, g, t in LINEARS])
@pytest.mark.parametrize("n,k", [(64, 128), (60, 100), (17, 24), (130, 272)])
@pytest.mark.parametrize("rows", [1, 3, 140], ids=["gemv", "kernel", "dequant"])  # 140 >= dequant_rows, any dtype
def test_linear_error_is_the_predicted_quantization_error(mode, group, tiled, n, k, rows):
    """Odd shapes are padded, not refused: N % 16, K % G and (int8 bf16 kernel) K % 16 need not be 0."""
    g = torch.Generator().manual_seed(n * k + rows)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    x = torch.randn(1, rows, k, generator=g)  # [B, T, K]: leading dims are kept
    lin = Q.QuantLinear(w, b, mode, group or 128, torch.bfloat16, tiled=tiled)
    int8_pad = k % 32 != 0 or lin.tiled and n % Q.TILE_ROWS != 0
    assert lin.padded == (mode == "int4" and (n % 16 != 0 or k % group != 0) or mode == "int8" and int8_pad)
    y, ref = lin(x), x @ w.T + b
    assert y.shape == ref.shape and y.dtype == torch.float32
    measured = ((y - ref).norm() / (ref - b).norm()).item()
    pred = predicted_rel_error(lin, x.reshape(-1, k), (ref - b).reshape(-1, n))
    assert 0.7 * pred <= measured <= 1.25 * pred + BF16_SLACK, (measured, pred)


@pytest.mark.parametrize("mode,group,tiled", [("int8", 0, False), ("int8", 0, True), ("int4", 64, False)],
                         ids=["int8-torch", "int8-tiled", "int4"])
def test_kernel_and_dequantized_paths_agree(mode, group, tiled):
    """Both paths multiply by the same quantized weight: they differ by bf16 rounding only (<= 1%)."""
    if tiled:
        require_tiled_kernel()
    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(202, 192, generator=g), torch.randn(80, 192, generator=g).bfloat16()
    lin = Q.QuantLinear(w, None, mode, group or 128, torch.bfloat16, tiled=tiled)
    if mode == "int8":
        q, s = lin.qweight, lin.scales
        kern, deq = Q.int8_kernel_mm(x, q, s, tiled)[:, :202], Q.int8_dequant_mm(x, q, s, tiled)[:, :202]
    else:
        if Q._int4_block_n() is None:
            pytest.skip("int4 packed layout of this torch build is not known: kernel only")
        kern = Q.int4_kernel_mm(x, lin.qweight, lin.scales, group)[:, :202]
        deq = Q.int4_dequant_mm(x, lin.qweight, lin.scales, group)[:, :202]
    fake = x.float() @ lin.dequantize().float().T
    for y in (kern, deq):
        assert ((y.float() - fake).norm() / fake.norm()).item() < 0.01


def require_tiled_kernel() -> None:
    """The tiled int8 kernel must build wherever the CPU has AVX-512 or AVX2 + FMA (a compiler and ninja come
    with the test extras and .ci/run): a build failure there fails the test; only a CPU with neither skips."""
    from qwenvl.engine import cpu_kernels

    why = cpu_kernels.unavailable_reason()
    if why and why.startswith("the CPU lacks"):
        pytest.skip(why)
    ext, how = cpu_kernels.tiled_gemv()
    assert ext is not None, how


def test_tiled_int8_kernel_is_exact_fp32_over_the_tile_layout():
    """Our kernel against the exact fp32 product of the same int8 weight, over ragged shapes (N not a
    multiple of 4, K not of 32, M from 1 to 15 rows: every x-block width the kernel dispatches on, 1-6 with
    AVX-512 and 1-3 with AVX2, and blocks after a full one); the tile order round-trips; the layout is what
    tiled_gemv.cpp reads (tile t, column block b: rows 4t..4t+3, columns 32b..32b+31)."""
    require_tiled_kernel()
    g = torch.Generator().manual_seed(11)
    for n, k, m in [(4, 32, 1), (17, 24, 3), (130, 272, 15), (1536, 1536, 1), (64, 96, 2), (36, 64, 4),
                    (20, 160, 5), (44, 96, 6), (28, 64, 7), (40, 128, 11)]:
        w = torch.randn(n, k, generator=g)
        q, s = Q.quantize_int8(w, torch.bfloat16)
        qt, st = Q.tile_int8(q, s)
        assert qt.shape[0] % 4 == 0 and torch.equal(Q.untile(qt)[:n], q)
        kp = q.shape[1]
        if kp >= 64:
            assert torch.equal(qt.view(-1, kp // 32, 4, 32)[0, 1, 2], q[2, 32:64])
        x = torch.randn(m, k, generator=g)
        want = x @ (q[:, :k].float() * s.float()[:, None]).T
        got = Q.int8_mm(x, qt, st, n, tiled=True).float()
        assert got.shape == (m, n)
        # fp32 accumulation of exact int8 * fp32 products: only summation order differs
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5


def test_int4_unpack_inverts_the_cpu_packing_and_row_blocks_pack_alike():
    block = Q._int4_block_n()
    if block is None:
        pytest.skip("int4 packed layout of this torch build is not known: kernel only")
    q = torch.randint(0, 16, (2 * block + 48, 96), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    assert torch.equal(Q.unpack_int4(Q._INT4_PACK(q, 1), q.shape[0], block), q.T.to(torch.uint8))
    w = torch.randn(2100, 128, generator=torch.Generator().manual_seed(1))  # 3 row blocks of 1024, last padded
    whole, blocks = Q.quantize_int4(w, 64, torch.bfloat16), Q._quantize(w, "int4", 64, torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(whole, blocks, strict=True))


def test_quantized_experts_match_fake_quant_experts():
    g = torch.Generator().manual_seed(2)
    ref = MoeExperts(64, 24, 6)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1, generator=g)
    x = torch.randn(40, 64, generator=g)
    experts = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(40)])
    weights = torch.rand(40, 2, generator=g)
    for mode, group in (("int8", 128), ("int4", 32)):
        q = Q.QuantExperts(ref, mode, group, torch.bfloat16)
        fake = MoeExperts(64, 24, 6)
        gate_up, down = q.dequantize()
        with torch.no_grad():
            fake.gate_up_proj.copy_(gate_up.float())
            fake.down_proj.copy_(down.float())
        for rows in (1, 40):  # 1 token: kernel per expert; 40 tokens x 2 / 6 experts: ~13 rows each
            args = x[:rows], experts[:rows], weights[:rows]
            y, want, orig = q(*args), fake(*args), ref(*args)
            assert ((y - want).norm() / want.norm()).item() < 0.01
            assert 0.002 < ((y - orig).norm() / orig.norm()).item() < (0.03 if mode == "int8" else 0.25)


# ---------------------------------------------------------------------------------------------
# whole models

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tests.fixtures.hf_tiny_qwen3 import make_hf_checkpoint as make_qwen3
    from tests.model.hf_tiny import make_hf_checkpoint as make_qwen2

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            folder = tmp_path_factory.mktemp("quant_" + family)
            if family.startswith("qwen3"):
                make_qwen3(folder, moe=family.endswith("moe"), seed=3)
            else:
                make_qwen2(family, folder, seed=3)
            cache[family] = folder
        return cache[family]

    return get


def image_prompt(model, seed: int = 0, grid: tuple[int, int, int] = (1, 16, 28)) -> ModelInputs:
    """Text, one image (patch grid 16 x 28 -> 112 tokens after the 2 x 2 merge), text: T = 132, so the
    prefill takes the dequantize + GEMM path (>= dequant_rows in bf16 and fp32)."""
    cfg, v = model.cfg, model.cfg.vision
    n_img = grid[0] * grid[1] * grid[2] // v.spatial_merge_size**2
    ids = [151644, 872, 198, 9707, 11] + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + \
        [cfg.vision_start_token_id + 1] + [3838, 374, 419, 30, 151645, 198, 151644, 77091, 198]
    pos, delta = mrope_positions(ids, families.of(cfg).rope_spec(cfg), [grid])
    px = torch.randn(grid[0] * grid[1] * grid[2], v.in_channels * v.temporal_patch_size * v.patch_size**2,
                     generator=torch.Generator().manual_seed(seed))
    return ModelInputs(input_ids=ids, positions=pos, rope_delta=delta, image_pixels=px, image_grid=[grid])


def text_prompt(model) -> ModelInputs:
    """12 text tokens: every matmul takes the kernel path (< dequant_rows rows)."""
    ids = [151644, 872, 198, 9707, 11, 3838, 374, 419, 30, 151645, 198, 77091]
    pos, delta = mrope_positions(ids, families.of(model.cfg).rope_spec(model.cfg))
    return ModelInputs(input_ids=ids, positions=pos, rope_delta=delta)


@torch.no_grad()
def prompt_logits(model, inp: ModelInputs) -> torch.Tensor:
    embeds, _ = prefill_embeds(model, inp)
    return model.logits(model(embeds, inp.positions.unsqueeze(1)))[0].float()


def agreement(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(rms |d| / std(ref), top-1 agreement) over [T, V] logits."""
    d = got - ref
    return (d.pow(2).mean().sqrt() / ref.std()).item(), (got.argmax(-1) == ref.argmax(-1)).float().mean().item()


def max_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.std()).item()


def fake_quant(folder, quantized: nn.Module) -> nn.Module:
    """The float model with every weight the quantized model replaced set to its dequantized value (fp32)."""
    fake = load_model(folder)
    with torch.no_grad():
        for name, mod in quantized.named_modules():
            if isinstance(mod, Q.QuantLinear):
                if name == "lm_head" and fake.lm_head is None:
                    fake.lm_head = nn.Linear(mod.in_features, mod.out_features, bias=False)
                fake.get_submodule(name).weight.copy_(mod.dequantize().float())
            elif isinstance(mod, Q.QuantExperts):
                gate_up, down = mod.dequantize()
                fake.get_submodule(name).gate_up_proj.copy_(gate_up.float())
                fake.get_submodule(name).down_proj.copy_(down.float())
    return fake


# Measured over fp32 / bf16 models and both prompts: rms/std 0.010-0.032, max/std 0.07-0.13 dense and
# 0.22-0.41 MoE (an expert swap at a near-tie in the router's top-k moves one position's logits a lot),
# top-1 0.83-1.00 (12 text positions: 0.83 is 10 of 12).
INT8_RMS, TOP1 = 0.06, 0.75
MAX_ERR = {"dense": 0.3, "moe": 0.8}
# int4 vs fake quant: rms/std 0.004-0.008 dense, up to 0.034 MoE (bf16 compute moves a router near-tie)
FAKE_RMS = {"dense": 0.03, "moe": 0.08}


def kind(family: str) -> str:
    return "moe" if family.endswith("moe") else "dense"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_logits_stay_close_and_the_vision_tower_is_untouched(checkpoint, family, dtype):
    model = load_model(checkpoint(family), dtype)
    inputs = image_prompt(model), text_prompt(model)
    rows = [Q.dequant_rows(m, dtype) for m in Q.MODES]
    assert len(inputs[0].input_ids) >= max(rows) and len(inputs[1].input_ids) < min(rows)
    refs = [prompt_logits(model, inp) for inp in inputs]
    visual = {k: v.clone() for k, v in model.visual.state_dict().items()}
    model.train()  # quantize_model does not care about the mode
    report = Q.quantize_model(model, "int8")
    model.eval()
    for inp, ref in zip(inputs, refs, strict=True):
        got = prompt_logits(model, inp)
        rms, top1 = agreement(got, ref)
        assert rms < INT8_RMS and max_error(got, ref) < MAX_ERR[kind(family)] and top1 >= TOP1, \
            (rms, max_error(got, ref), top1)
    assert model.visual.state_dict().keys() == visual.keys()
    for k, v in model.visual.state_dict().items():
        assert v.dtype == dtype and torch.equal(v, visual[k]), k
    assert not any(isinstance(m, nn.Linear) for m in model.model.layers.modules())  # nothing left float
    assert report["linears"] == sum(isinstance(m, Q.QuantLinear) for m in model.model.layers.modules())
    assert report["lm_head"]["tied"] is False and isinstance(model.lm_head, Q.QuantLinear)


@pytest.mark.parametrize("family", FAMILIES)
def test_int4_matches_fake_quant_model(checkpoint, family):
    """vs the float model: rms/std measured 0.11-0.28 on these random models (their int4 error is large)."""
    model = load_model(checkpoint(family))
    inputs = image_prompt(model, seed=1), text_prompt(model)
    refs = [prompt_logits(model, inp) for inp in inputs]
    Q.quantize_model(model, "int4")
    fake = fake_quant(checkpoint(family), model)
    for inp, ref in zip(inputs, refs, strict=True):
        got = prompt_logits(model, inp)
        rms, top1 = agreement(got, prompt_logits(fake, inp))
        assert rms < FAKE_RMS[kind(family)] and top1 >= TOP1, (rms, top1)
        assert 0.02 < agreement(got, ref)[0] < 0.6  # int4 did change the weights, and not to noise


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_moe_experts_are_quantized_the_router_is_not_and_generate_runs(checkpoint, mode):
    model = load_model(checkpoint("qwen3_vl_moe"))
    routers = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, MoeRouter)}
    report = Q.quantize_model(model, mode)
    blocks = [m for m in model.modules() if isinstance(m, SparseMoeBlock)]
    assert len(blocks) == report["experts"] == 2  # layers 0 and 2; layer 1 is dense (mlp_only_layers)
    stored = torch.int8 if mode == "int8" else torch.uint8
    assert all(isinstance(b.experts, Q.QuantExperts) and b.experts.gate_up_q.dtype == stored for b in blocks)
    for n, m in model.named_modules():
        if isinstance(m, MoeRouter):
            assert m.weight.dtype == torch.float32 and torch.equal(m.weight, routers[n])
    inp = image_prompt(model, seed=2)
    out = generate(model, inp, SamplingParams(max_new_tokens=12, temperature=0.0)).token_ids
    assert len(out) == 12 and all(0 <= t < model.cfg.text.vocab_size for t in out)


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_weight_bytes_are_under_30_percent_of_fp32(checkpoint, family):
    """Counted from the modules' tensors, not only from the report."""
    model = load_model(checkpoint(family))
    fp32 = sum(p.numel() * 4 for n, p in model.model.layers.named_parameters()
               if n.endswith(("proj.weight", "experts.gate_up_proj", "experts.down_proj")))
    report = Q.quantize_model(model, "int8")
    held = sum(b.numel() * b.element_size() for n, b in model.model.layers.named_buffers()
               if n.endswith(("qweight", "scales", "_q", "_s")))
    assert held == report["decoder"]["quant_bytes"] and report["decoder"]["float_bytes"] == fp32
    assert held < 0.30 * fp32, held / fp32


# ---------------------------------------------------------------------------------------------
# the shipped, trained Qwen-VL v1 tiny model, through the pipeline


def v1_messages():
    rng = np.random.default_rng(0)
    pic = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return [{"role": "user", "content": [{"type": "image", "image": pic}, {"type": "text", "text": "What is here?"}]}]


TEXT = [{"role": "user", "content": "Describe the weather in a short sentence."}]  # 22 greedy tokens


@pytest.fixture(scope="module")
def v1_reference():
    import qwenvl

    pipe = qwenvl.load("qwenvl-tiny-qwen-vl", dtype="float32")  # the fp32 reference the quantized runs are measured to
    msgs = v1_messages()
    return msgs, pipe.logits(msgs), pipe.chat(TEXT, max_new_tokens=24, temperature=0.0).token_ids


def test_int8_pipeline_on_the_trained_v1_model_keeps_greedy_tokens(v1_reference):
    """Image prompt logits: measured rms/std 0.007, top-1 1.00; the same 22 greedy tokens on a text prompt."""
    import qwenvl

    msgs, ref, ref_tokens = v1_reference
    pipe = qwenvl.load("qwenvl-tiny-qwen-vl", dtype="float32", quantize="int8")
    rms, top1 = agreement(pipe.logits(msgs), ref)
    assert rms < 0.04 and top1 >= 0.95, (rms, top1)
    assert len(ref_tokens) >= 16
    assert pipe.chat(TEXT, max_new_tokens=24, temperature=0.0).token_ids == ref_tokens
    with pytest.raises(ValueError, match="quantized"):
        pipe.save("/nonexistent/never-written")


@pytest.mark.parametrize("mode,limit", [("int8", 0.30), ("int4", 0.16)])
def test_weight_bytes_of_the_v1_model_shrink(mode, limit):
    """v1 tiny: hidden 256, MLP 704, so group 64 needs no padding; measured 0.252 (int8), 0.141 (int4)."""
    from qwenvl.pipeline import resolve_model

    model = load_model(resolve_model("qwenvl-tiny-qwen-vl"))
    fp32 = sum(m.weight.numel() * 4 for m in model.model.layers.modules() if isinstance(m, nn.Linear))
    report = Q.quantize_model(model, mode)
    held = sum(b.numel() * b.element_size() for n, b in model.model.layers.named_buffers()
               if n.endswith(("qweight", "scales")))
    assert report["padded"] == [] and held == report["decoder"]["quant_bytes"]
    assert held < limit * fp32, held / fp32


def test_int4_on_the_trained_v1_model_keeps_most_top1(v1_reference):
    """Image prompt, group 64: measured rms/std 0.027, top-1 0.97 (text prompt: 0.050, 0.94)."""
    import qwenvl

    msgs, ref, _ = v1_reference
    rms, top1 = agreement(qwenvl.load("qwenvl-tiny-qwen-vl", dtype="float32", quantize="int4").logits(msgs), ref)
    assert rms < 0.08 and top1 >= 0.85, (rms, top1)


# ---------------------------------------------------------------------------------------------
# refusals


def test_refusals_name_the_choices(checkpoint, tmp_path):
    import qwenvl

    with pytest.raises(ValueError, match="int8"):
        qwenvl.load("qwenvl-tiny", quantize="int3")
    model = load_model(checkpoint("qwen2_vl"))
    with pytest.raises(ValueError, match="int8"):
        Q.quantize_model(model, "fp8")
    with pytest.raises(ValueError, match="32, 64, 128, 256"):
        Q.quantize_model(model, "int4", group_size=16)
    with pytest.raises(ValueError, match="lm_head"):
        Q.quantize_model(model, "int8", lm_head="int2")
    Q.quantize_model(model, "int8", lm_head=None)
    assert model.lm_head is not None and isinstance(model.lm_head, nn.Linear)  # kept float
    with pytest.raises(ValueError, match="already"):
        Q.quantize_model(model, "int8")
    with pytest.raises(ValueError, match="inference-only"):
        save_model(model, tmp_path)
    assert not any(tmp_path.iterdir())
