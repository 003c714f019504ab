"""Shared fixtures: tiny random checkpoints with a real Qwen2 tokenizer, built once per session; a folder
of small images with one corrupt file (the CLI caption tests, local and --endpoint)."""

from __future__ import annotations

import json

import pytest


def write_image(path, colour=(200, 30, 30), size=(64, 48)):
    from PIL import Image

    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for k in range(4):
        write_image(d / f"im{k}.png", (40 * k, 100, 200))
    (d / "corrupt.png").write_bytes(b"not a png at all")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


PRE = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 64, "patch_size": 14, "temporal_patch_size": 2,
       "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
       "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor"}


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """family -> (folder, transformers model) for a tiny random Qwen2-VL / Qwen2.5-VL checkpoint folder
    with tokenizer.json, tokenizer_config.json, chat_template.json and preprocessor_config.json."""
    from tests.fixtures.qwen2_tokenizer import write_chat_template_json, write_qwen2_tokenizer
    from tests.model.hf_tiny import make_hf_checkpoint

    cache: dict = {}

    def get(family: str):
        if family not in cache:
            folder = tmp_path_factory.mktemp(family + "_ckpt")
            hf = make_hf_checkpoint(family, folder, seed=11)
            write_qwen2_tokenizer(folder)
            write_chat_template_json(folder)
            (folder / "preprocessor_config.json").write_text(json.dumps(PRE))
            cache[family] = (folder, hf)
        return cache[family]

    return get
