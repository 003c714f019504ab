"""Qwen-VL v1 checkpoints through the production loader, and the v1 model against a reference forward.

A tiny random checkpoint is written here in the OFFICIAL layout (transformer.*, fused c_attn, the ViT's
per-head interleaved in_proj; shapes from architecture-facts A.6), as safetensors and as sharded
pytorch_model-*.bin + index. It must load strictly, refuse wrong key sets by name, save back
bit-exactly, and give the logits of `reference_logits`, a straightforward forward written from
facts A.2-A.5 that reads the official tensors directly. The last section checks the v1 decoder's
dynamic NTK and log-n scaling against the facts' formulas.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from qwenvl.families import from_hf_dict
from qwenvl.model.decoder import TextDecoder
from qwenvl.model.rope import inv_freq
from qwenvl.weights import checkpoint_shapes, load_model, save_model
from tests.families.test_qwen_vl_config import OFFICIAL

IMG = 280  # <img> in the tiny vocab; </img> = 281, <imgpad> = 282
TINY = {
    "model_type": "qwen", "architectures": ["QWenLMHeadModel"], "vocab_size": 300, "hidden_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "kv_channels": 64, "intermediate_size": 192,
    "rotary_emb_base": 10000, "rotary_pct": 1.0, "layer_norm_epsilon": 1e-6, "seq_length": 2048,
    "max_position_embeddings": 8192, "no_bias": True, "use_dynamic_ntk": True, "use_logn_attn": True,
    "tie_word_embeddings": False,
    # 84 px / 14 = 6x6 patches: the 16x16 ViT table and the 4x4 query table are both resized to 6x6
    "visual": {"heads": 4, "image_size": 84, "image_start_id": IMG, "layers": 2, "mlp_ratio": 2.0,
               "output_dim": 256, "patch_size": 14, "width": 48, "n_queries": 16},
}


def official_shapes(d: dict) -> dict[str, tuple[int, ...]]:
    """The official key set (facts A.6) for config dict d, written out independently of qwenvl."""
    h, v = d["hidden_size"], d["visual"]
    inter, w, out, p = d["intermediate_size"] // 2, v["width"], v["output_dim"], v["patch_size"]
    mlp, nq = int(w * v["mlp_ratio"]), v.get("n_queries", 256)
    s = {"transformer.wte.weight": (d["vocab_size"], h), "transformer.ln_f.weight": (h,),
         "lm_head.weight": (d["vocab_size"], h)}
    for i in range(d["num_hidden_layers"]):
        b = f"transformer.h.{i}."
        s.update({b + "ln_1.weight": (h,), b + "ln_2.weight": (h,), b + "attn.c_attn.weight": (3 * h, h),
                  b + "attn.c_attn.bias": (3 * h,), b + "attn.c_proj.weight": (h, h), b + "mlp.w1.weight": (inter, h),
                  b + "mlp.w2.weight": (inter, h), b + "mlp.c_proj.weight": (h, inter)})
    vp = "transformer.visual."
    s.update({vp + "conv1.weight": (w, 3, p, p), vp + "positional_embedding": (256, w), vp + "ln_pre.weight": (w,),
              vp + "ln_pre.bias": (w,), vp + "ln_post.weight": (out,), vp + "ln_post.bias": (out,),
              vp + "proj": (out, out)})
    for i in range(v["layers"]):
        b = f"{vp}transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            s.update({f"{b}{ln}.weight": (w,), f"{b}{ln}.bias": (w,)})
        s.update({b + "attn.in_proj.weight": (3 * w, w), b + "attn.in_proj.bias": (3 * w,),
                  b + "attn.out_proj.weight": (w, w), b + "attn.out_proj.bias": (w,),
                  b + "mlp.c_fc.weight": (mlp, w), b + "mlp.c_fc.bias": (mlp,),
                  b + "mlp.c_proj.weight": (w, mlp), b + "mlp.c_proj.bias": (w,)})
    ap = vp + "attn_pool."
    s.update({ap + "query": (nq, out), ap + "pos_embed": (nq, out), ap + "kv_proj.weight": (out, w),
              ap + "attn.in_proj_weight": (3 * out, out), ap + "attn.in_proj_bias": (3 * out,),
              ap + "attn.out_proj.weight": (out, out), ap + "attn.out_proj.bias": (out,)})
    for ln in ("ln_q", "ln_kv"):
        s.update({f"{ap}{ln}.weight": (out,), f"{ap}{ln}.bias": (out,)})
    return s


def official_state(d: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in sorted(official_shapes(d).items()):
        norm = (".ln_" in k or k.startswith("transformer.ln_")) and k.endswith(".weight")
        out[k] = ((1.0 if norm else 0.0) + (0.2 if norm else 0.08) * torch.randn(shape, generator=g)).to(dtype)
    return out


def write_checkpoint(folder: Path, d: dict, state: dict[str, torch.Tensor], fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(d))
    if fmt == "safetensors":
        save_file(state, str(folder / "model.safetensors"))
        return folder
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, ks in shards.items():
        torch.save({k: state[k] for k in ks}, folder / name)
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return folder


# ----------------------------------------------------------------------------------------------
# reference forward, from the facts, on the official tensors


def _ln(x, sd, key, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), sd[key + ".weight"], sd[key + ".bias"], eps)


def _rms(x, w, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def _softmax_attn(q, k, v, causal):
    """q, k, v [B, H, T, hd] -> [B, H, T, hd], explicit scores."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        t = q.shape[2]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v


def reference_visual(sd: dict, v: dict, px: torch.Tensor) -> torch.Tensor:
    """pixels [n, 3, S, S] -> [n, n_queries, output_dim]."""
    vp, w, out, heads = "transformer.visual.", v["width"], v["output_dim"], v["heads"]
    x = F.conv2d(px, sd[vp + "conv1.weight"], stride=v["patch_size"]).flatten(2).transpose(1, 2)  # [n, g*g, W]
    n, L, _ = x.shape
    g = math.isqrt(L)

    def resize(t):
        s = math.isqrt(t.shape[0])
        if s == g:
            return t
        return F.interpolate(t.float().reshape(1, s, s, -1).permute(0, 3, 1, 2), size=(g, g), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1).reshape(g * g, -1).to(t.dtype)

    x = _ln(x + resize(sd[vp + "positional_embedding"]), sd, vp + "ln_pre")
    for i in range(v["layers"]):
        b = f"{vp}transformer.resblocks.{i}."
        h = _ln(x, sd, b + "ln_1")
        qkv = F.linear(h, sd[b + "attn.in_proj.weight"], sd[b + "attn.in_proj.bias"])
        q, k, val = qkv.view(n, L, heads, -1).transpose(1, 2).split(w // heads, dim=-1)  # per-head [q_h, k_h, v_h]
        a = _softmax_attn(q, k, val, causal=False).transpose(1, 2).reshape(n, L, w)
        x = x + F.linear(a, sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"])
        h = _ln(x, sd, b + "ln_2")
        h = F.gelu(F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"]))
        x = x + F.linear(h, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    ap = vp + "attn_pool."
    kv = _ln(x @ sd[ap + "kv_proj.weight"].t(), sd, ap + "ln_kv")
    pos = sd[ap + "pos_embed"]
    q = (_ln(sd[ap + "query"], sd, ap + "ln_q") + pos).expand(n, -1, -1)
    wq, wk, wv = sd[ap + "attn.in_proj_weight"].chunk(3)  # torch MHA layout [all q; all k; all v]
    bq, bk, bv = sd[ap + "attn.in_proj_bias"].chunk(3)
    nh = out // 128

    def heads_of(t):
        return t.view(n, t.shape[1], nh, -1).transpose(1, 2)

    a = _softmax_attn(heads_of(q @ wq.t() + bq), heads_of((kv + resize(pos)) @ wk.t() + bk),
                      heads_of(kv @ wv.t() + bv), causal=False)
    a = F.linear(a.transpose(1, 2).reshape(n, -1, out), sd[ap + "attn.out_proj.weight"], sd[ap + "attn.out_proj.bias"])
    return _ln(a, sd, vp + "ln_post") @ sd[vp + "proj"]


def reference_logits(sd: dict, d: dict, ids: torch.Tensor, px: torch.Tensor, training: bool = False) -> torch.Tensor:
    feats = reference_visual(sd, d["visual"], px)
    x = sd["transformer.wte.weight"][ids].clone()  # [B, T, H]
    start, k = d["visual"]["image_start_id"], 0
    for row in range(ids.shape[0]):
        opens = (ids[row] == start).nonzero().flatten().tolist()
        closes = (ids[row] == start + 1).nonzero().flatten().tolist()
        for a, e in zip(opens, closes, strict=True):
            x[row, a + 1:e] = feats[k]  # the slots strictly between the tags; tags keep their embeddings
            k += 1
    bsz, t, hid = x.shape
    nh = d["num_attention_heads"]
    hd = hid // nh
    seq = d["seq_length"]
    alpha = 1
    if d["use_dynamic_ntk"] and not training:
        alpha = max(2 ** math.ceil(math.log2(t / seq) + 1) - 1, 1)
    base = d["rotary_emb_base"] * alpha ** (hd / (hd - 2))
    freqs = 1.0 / base ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.arange(t).float()[:, None] * freqs
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()  # [T, hd]
    p1 = torch.arange(t).float() + 1
    logn = torch.ones(t)
    if d["use_logn_attn"] and not training:
        logn = torch.where(p1 > seq, p1.log() / math.log(seq), logn)

    def rope(z):  # [B, T, nh, hd], rotate-half in fp32
        z1, z2 = z.float().chunk(2, -1)
        return (z.float() * cos[:, None] + torch.cat([-z2, z1], -1) * sin[:, None]).type_as(z)

    for i in range(d["num_hidden_layers"]):
        b = f"transformer.h.{i}."
        h = _rms(x, sd[b + "ln_1.weight"])
        q, kk, v = F.linear(h, sd[b + "attn.c_attn.weight"], sd[b + "attn.c_attn.bias"]).split(hid, -1)
        q, kk, v = (z.view(bsz, t, nh, hd) for z in (q, kk, v))
        q = rope(q) * logn[None, :, None, None]
        a = _softmax_attn(q.transpose(1, 2), rope(kk).transpose(1, 2), v.transpose(1, 2), causal=True)
        x = x + a.transpose(1, 2).reshape(bsz, t, hid) @ sd[b + "attn.c_proj.weight"].t()
        h = _rms(x, sd[b + "ln_2.weight"])
        up, gate = h @ sd[b + "mlp.w1.weight"].t(), h @ sd[b + "mlp.w2.weight"].t()  # w2 is the SiLU side
        x = x + (up * F.silu(gate)) @ sd[b + "mlp.c_proj.weight"].t()
    return _rms(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].t()


def prompt_ids(n_queries: int, byte_path: bytes = b"a.png") -> list[int]:
    """`<img>` + path bytes padded with <imgpad> to n_queries slots + `</img>` (the v1 span), twice, with text."""
    span = [IMG, *byte_path, *[IMG + 2] * (n_queries - len(byte_path)), IMG + 1]
    return [7, 11, *span, 13, 42, *span, 99, 5, 17]


# ----------------------------------------------------------------------------------------------
# loading, refusing, saving


@pytest.fixture(scope="module")
def official():
    return official_state(TINY)


def test_full_size_key_table_matches_the_released_checkpoint():
    """853 tensors; bf16 total_size 19,313,870,336 bytes as in Qwen-VL-Chat's index (facts A.1, A.6)."""
    ours = checkpoint_shapes(from_hf_dict(OFFICIAL))
    assert ours == official_shapes(OFFICIAL)
    assert len(ours) == 853 and 2 * sum(math.prod(s) for s in ours.values()) == 19_313_870_336


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_official_checkpoint_loads_with_the_right_mapping(tmp_path, official, fmt):
    model = load_model(write_checkpoint(tmp_path / fmt, TINY, official, fmt))
    sd, h = model.state_dict(), TINY["hidden_size"]
    for i in range(TINY["num_hidden_layers"]):
        o, m = official, f"model.layers.{i}."
        c = o[f"transformer.h.{i}.attn.c_attn.weight"]
        assert torch.equal(sd[m + "self_attn.q_proj.weight"], c[:h])
        assert torch.equal(sd[m + "self_attn.k_proj.weight"], c[h:2 * h])
        assert torch.equal(sd[m + "self_attn.v_proj.bias"], o[f"transformer.h.{i}.attn.c_attn.bias"][2 * h:])
        assert torch.equal(sd[m + "mlp.gate_proj.weight"], o[f"transformer.h.{i}.mlp.w2.weight"])
        assert torch.equal(sd[m + "mlp.up_proj.weight"], o[f"transformer.h.{i}.mlp.w1.weight"])
        assert torch.equal(sd[m + "mlp.down_proj.weight"], o[f"transformer.h.{i}.mlp.c_proj.weight"])
        assert torch.equal(sd[m + "input_layernorm.weight"], o[f"transformer.h.{i}.ln_1.weight"])
    vb = "transformer.visual.transformer.resblocks.1."
    assert torch.equal(sd["visual.transformer.resblocks.1.mlp.fc1.weight"], official[vb + "mlp.c_fc.weight"])
    assert torch.equal(sd["visual.transformer.resblocks.1.attn.in_proj.weight"], official[vb + "attn.in_proj.weight"])
    assert torch.equal(sd["visual.attn_pool.pos_embed"], official["transformer.visual.attn_pool.pos_embed"])
    assert torch.equal(sd["visual.proj"], official["transformer.visual.proj"])
    assert torch.equal(sd["model.embed_tokens.weight"], official["transformer.wte.weight"])


@pytest.mark.parametrize("edit,named", [
    ("drop:transformer.h.1.mlp.w2.weight", "transformer.h.1.mlp.w2.weight"),
    ("drop:transformer.visual.attn_pool.pos_embed", "transformer.visual.attn_pool.pos_embed"),
    ("add:transformer.h.0.attn.rotary_emb.inv_freq", "transformer.h.0.attn.rotary_emb.inv_freq"),
    ("add:transformer.h.2.ln_1.weight", "transformer.h.2.ln_1.weight"),
    ("shape:transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.weight"),
    ("shape:transformer.visual.attn_pool.query", "transformer.visual.attn_pool.query"),
])
def test_wrong_key_sets_are_refused_by_name(tmp_path, official, edit, named):
    op, key = edit.split(":")
    state = dict(official)
    if op == "drop":
        del state[key]
    elif op == "add":
        state[key] = torch.zeros(4)
    else:
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_model(write_checkpoint(tmp_path, TINY, state, "safetensors"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_round_trip_is_bit_exact(tmp_path, dtype):
    state = official_state(TINY, seed=3, dtype=dtype)
    model = load_model(write_checkpoint(tmp_path / "in", TINY, state, "bin"), dtype=dtype)
    save_model(model, tmp_path / "out")
    back = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(back) == sorted(state)
    bad = [k for k in state if back[k].dtype != dtype or not torch.equal(back[k], state[k])]
    assert not bad
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["model_type"] == "qwen" and written["architectures"] == ["QWenLMHeadModel"]
    assert from_hf_dict(written) == model.cfg
    again = load_model(tmp_path / "out", dtype=dtype)  # and it loads back
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(),
                                                  strict=True))


def test_tied_embeddings_skip_lm_head(tmp_path, official):
    d = dict(TINY, tie_word_embeddings=True)
    state = {k: v for k, v in official.items() if k != "lm_head.weight"}
    model = load_model(write_checkpoint(tmp_path / "a", d, state, "safetensors"))
    assert model.lm_head is None
    load_model(write_checkpoint(tmp_path / "b", d, official, "safetensors"))  # a redundant copy is dropped
    save_model(model, tmp_path / "out")
    assert "lm_head.weight" not in load_file(str(tmp_path / "out" / "model.safetensors"))


# ----------------------------------------------------------------------------------------------
# the whole model against the reference forward


@pytest.mark.parametrize("seq_length", [2048, 16])  # 16: the 43-token prompt triggers NTK (alpha 7) and log-n
def test_forward_matches_reference(tmp_path, official, seq_length):
    d = dict(TINY, seq_length=seq_length)
    model = load_model(write_checkpoint(tmp_path, d, official, "safetensors"))
    nq = d["visual"]["n_queries"]
    ids = torch.tensor([prompt_ids(nq)])
    px = torch.randn(2, 3, 84, 84, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.encode_images(px)
        assert feats.shape == (2 * nq, d["hidden_size"])
        embeds = model.embed(ids, feats)
        logits = model.logits(model(embeds, torch.arange(ids.shape[1])[None]))
        ref = reference_logits(official, d, ids, px)
    assert logits.shape == (1, ids.shape[1], d["vocab_size"]) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    # tags keep their word embeddings; only the slots between them are image features
    assert torch.equal(embeds[0, 2], official["transformer.wte.weight"][IMG])
    assert torch.equal(embeds[0, 3 + nq], official["transformer.wte.weight"][IMG + 1])


def test_bf16_forward_is_close_to_fp32(tmp_path, official):
    folder = write_checkpoint(tmp_path, dict(TINY, seq_length=16), official, "safetensors")
    ids = torch.tensor([prompt_ids(TINY["visual"]["n_queries"])])
    px = torch.randn(2, 3, 84, 84, generator=torch.Generator().manual_seed(1))
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        m = load_model(folder, dtype=dt)
        with torch.no_grad():
            out[dt] = m.logits(m(m.embed(ids, m.encode_images(px)), torch.arange(ids.shape[1])[None]))
    assert out[torch.bfloat16].dtype == torch.bfloat16
    assert (out[torch.bfloat16].float() - out[torch.float32]).abs().max() < 0.5  # logits span about +-5


def test_slot_count_must_equal_n_queries(tmp_path, official):
    model = load_model(write_checkpoint(tmp_path, TINY, official, "safetensors"))
    ids = torch.tensor([prompt_ids(TINY["visual"]["n_queries"] + 1)])
    with pytest.raises(ValueError, match="placeholders and features do not match"):
        model.embed(ids, model.encode_images(torch.zeros(2, 3, 84, 84)))


# ----------------------------------------------------------------------------------------------
# dynamic NTK and log-n (facts A.5), on the decoder alone


def tiny_text(seq_length: int, ntk: bool, logn: bool):
    d = copy.deepcopy(TINY)
    d.update(seq_length=seq_length, use_dynamic_ntk=ntk, use_logn_attn=logn)
    return from_hf_dict(d).text


@pytest.mark.parametrize("length,alpha", [(1, 1), (16, 1), (17, 3), (32, 3), (33, 7), (64, 7), (65, 15)])
def test_ntk_alpha_and_base(length, alpha):
    dec = TextDecoder(tiny_text(16, True, False)).eval()
    hd = dec.cfg.head_dim
    torch.testing.assert_close(dec.rope_freqs(length), inv_freq(hd, 10000 * alpha ** (hd / (hd - 2))),
                               atol=0, rtol=0)
    assert torch.equal(dec.train().rope_freqs(length), inv_freq(hd, 10000))  # never while training


def _decoders(ntk: bool, logn: bool):
    torch.manual_seed(0)
    plain = TextDecoder(tiny_text(16, False, False))
    trick = TextDecoder(tiny_text(16, ntk, logn))
    trick.load_state_dict(plain.state_dict())
    return plain.eval(), trick.eval()


@pytest.mark.parametrize("ntk,logn", [(True, False), (False, True), (True, True)])
def test_prompts_up_to_seq_length_are_plain_rope(ntk, logn):
    plain, trick = _decoders(ntk, logn)
    x = torch.randn(2, 16, 256)
    pos = torch.arange(16)[None].expand(2, -1)
    with torch.no_grad():
        assert torch.equal(trick(x, pos), plain(x, pos))


def test_beyond_seq_length_ntk_changes_every_row_logn_only_rows_past_it():
    x = torch.randn(1, 24, 256, generator=torch.Generator().manual_seed(2))
    pos = torch.arange(24)[None]
    with torch.no_grad():
        plain, ntk = _decoders(True, False)
        ref, out = plain(x, pos), ntk(x, pos)
        assert (out[:, 1:] - ref[:, 1:]).abs().amax(-1).min() > 1e-4  # row 0 attends only to itself
        _, logn = _decoders(False, True)
        out = logn(x, pos)
        assert torch.equal(out[:, :16], ref[:, :16])  # positions 0..15: p + 1 <= seq_length, scale 1
        assert (out[:, 16:] - ref[:, 16:]).abs().amax(-1).min() > 1e-5
        # both are inference-only: training mode is plain RoPE
        _, both = _decoders(True, True)
        plain.train()
        both.train()
        assert torch.equal(both(x, pos), plain(x, pos))
