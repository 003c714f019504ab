"""Checkpoint I/O: both key layouts, strict key checks that name the key, sharding, round trip to transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwenvl.weights import checkpoint_files, iter_safetensors, load_model, save_model
from tests.model.hf_tiny import make_hf_checkpoint
from tests.model.test_parity_hf import hf_logits, ours_logits, patches, prompt


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w25")
    hf = make_hf_checkpoint("qwen2_5_vl", folder, seed=5)
    return folder, hf


def _rewrite(folder, dst, fn):
    state = load_file(folder / "model.safetensors")
    state = fn(state)
    dst.mkdir(exist_ok=True)
    save_file(state, dst / "model.safetensors")
    (dst / "config.json").write_text((folder / "config.json").read_text())
    return dst


def test_reader_matches_safetensors(hf_folder):
    folder, _ = hf_folder
    ref = load_file(folder / "model.safetensors")
    got = dict(iter_safetensors(folder / "model.safetensors"))
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_new_layout_loads_identically(hf_folder, tmp_path):
    folder, _ = hf_folder

    def rename(state):
        out = {}
        for k, v in state.items():
            if k.startswith("visual."):
                k = "model." + k
            elif k.startswith("model."):
                k = "model.language_model." + k[len("model."):]
            out[k] = v
        return out

    new = _rewrite(folder, tmp_path / "new", rename)
    a, b = load_model(folder), load_model(new)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("edit, needle", [
    (lambda s: {k: v for k, v in s.items() if k != "visual.blocks.2.attn.qkv.weight"},
     "missing keys (1): ['visual.blocks.2.attn.qkv.weight']"),
    (lambda s: {**s, "visual.extra.weight": torch.zeros(2)}, "unexpected keys (1): ['visual.extra.weight']"),
    (lambda s: {**s, "model.norm.weight": torch.zeros(63)}, "model.norm.weight: checkpoint [63] vs model [64]"),
])
def test_strict_keys_named(hf_folder, tmp_path, edit, needle):
    folder, _ = hf_folder
    bad = _rewrite(folder, tmp_path / "bad", edit)
    with pytest.raises(ValueError) as e:
        load_model(bad)
    assert needle in str(e.value)


def test_missing_shard_is_named(hf_folder, tmp_path):
    folder, hf = hf_folder
    out = tmp_path / "sharded"
    hf.save_pretrained(out, max_shard_size="1MB")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    assert load_model(out) is not None
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=shards[1].name):
        load_model(out)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_files(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@torch.no_grad()
def test_round_trip_to_transformers(family, tmp_path):
    """A model we save (sharded) loads in transformers and gives the same logits."""
    from transformers import AutoModelForImageTextToText

    src = tmp_path / "src"
    make_hf_checkpoint(family, src, seed=9)
    ours = load_model(src)
    dst = tmp_path / "ours"
    save_model(ours, dst, max_shard_bytes=8 * 1024 * 1024)
    assert (dst / "model.safetensors.index.json").is_file()
    assert json.loads((dst / "config.json").read_text())["model_type"] == family
    theirs = AutoModelForImageTextToText.from_pretrained(dst, dtype=torch.float32).eval()
    grid = [(1, 10, 14), (1, 6, 8)]
    ids, px = prompt([3, 4], [("image", g) for g in grid]), patches(grid, 1)
    ref = hf_logits(theirs, ids, px, grid)
    torch.testing.assert_close(ours_logits(ours, ids, px, grid), ref, atol=1e-4, rtol=0)
    again = load_model(dst)
    sa, sb = ours.state_dict(), again.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bf16_load(hf_folder):
    folder, _ = hf_folder
    m = load_model(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    assert m.model.inv_freq.dtype == torch.float32
