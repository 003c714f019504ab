"""Qwen-VL v1 through the public API: a tiny random checkpoint in the official key layout, the real
qwen.tiktoken vocabulary, `qwenvl.load` -> prompt ids in the official format -> generation -> boxes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import qwenvl
from tests.families.test_qwen_vl_keys import official_state, write_checkpoint
from tests.fixtures.qwen2_tokenizer import qwen_tiktoken_path

CFG = {
    "model_type": "qwen", "architectures": ["QWenLMHeadModel"], "vocab_size": 151936, "hidden_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 2, "kv_channels": 64, "intermediate_size": 256,
    "rotary_emb_base": 10000, "rotary_pct": 1.0, "layer_norm_epsilon": 1e-6, "seq_length": 2048,
    "max_position_embeddings": 8192, "no_bias": True, "use_dynamic_ntk": True, "use_logn_attn": True,
    "tie_word_embeddings": False,
    "visual": {"heads": 2, "image_size": 56, "image_start_id": 151857, "layers": 1, "mlp_ratio": 2.0,
               "output_dim": 128, "patch_size": 14, "width": 32, "n_queries": 256},
}


@pytest.fixture(scope="module")
def v1_folder(tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp("v1"), CFG, official_state(CFG, seed=2), "safetensors")
    shutil.copyfile(qwen_tiktoken_path(), folder / "qwen.tiktoken")
    (folder / "generation_config.json").write_text(json.dumps(
        {"chat_format": "chatml", "eos_token_id": 151643, "pad_token_id": 151643, "max_new_tokens": 512,
         "do_sample": True, "top_k": 0, "top_p": 0.5}))
    return folder


def test_v1_chat_end_to_end(v1_folder, tmp_path):
    pipe = qwenvl.load(v1_folder)
    assert pipe.family == "qwen_vl"
    img = tmp_path / "red.png"
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(img)
    msgs = [{"role": "user", "content": [{"type": "image", "image": str(img)},
                                         {"type": "text", "text": "Where is the red box?"}]}]
    inp = pipe.prepare(msgs)
    assert len(inp.input_ids) == 289  # facts A.7b: default system, ChatML, one image + this question
    assert inp.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               f"Picture 1: <img>{img}</img>\nWhere is the red box?")
    out = pipe.chat(msgs, max_new_tokens=6, seed=0)
    assert 0 < len(out.token_ids) <= 6 and isinstance(out.text, str)
    greedy = pipe.chat(msgs, max_new_tokens=6, temperature=0.0)
    assert greedy.token_ids == pipe.chat(msgs, max_new_tokens=6, temperature=0.0).token_ids


def test_v1_boxes_in_original_pixels(v1_folder):
    pipe = qwenvl.load(v1_folder)
    pil = Image.new("RGB", (2000, 500))
    inp = pipe.prepare([{"role": "user", "content": [{"type": "image", "image": pil},
                                                     {"type": "text", "text": "find it"}]}])
    (box,) = pipe.boxes("<ref>the car</ref><box>(100,200),(500,1000)</box>", inp)
    assert box["label"] == "the car"
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (200.0, 100.0, 1000.0, 500.0)


def test_v1_rejects_video(v1_folder):
    pipe = qwenvl.load(v1_folder)
    with pytest.raises(ValueError, match="video"):
        pipe.prepare([{"role": "user", "content": [{"type": "video", "video": "x.mp4"}]}])
