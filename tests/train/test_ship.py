"""Shipping a run: the per-stage table and the generation defaults written beside the weights."""

from __future__ import annotations

from qwenvl.train.ship import generation_config, recipe_hashes, stage_table


def _summary(vqa: float, en: float, zh: float) -> dict:
    return {"summary": {"vqa": {"vqa_acc": vqa, "n": 100}, "vqa/en": {"vqa_acc": en}, "vqa/zh": {"vqa_acc": zh},
                        "caption": {"cider": 0.1234}}}


def test_stage_table_has_a_column_per_stage_and_both_languages():
    table = stage_table({"stage0_text": _summary(0.21, 0.2, 0.22), "stage3_sft": _summary(0.605, 0.61, 0.6)})
    lines = table.splitlines()
    assert lines[0] == "| metric | stage0_text | stage3_sft |"
    assert "| attribute VQA acc | 21.0 (en 20.0 / zh 22.0) | 60.5 (en 61.0 / zh 60.0) |" in lines
    assert "| caption CIDEr-D | 0.123 | 0.123 |" in lines
    assert "| counting acc |  |  |" in lines  # missing metrics stay empty, never 0


def test_generation_defaults_per_generation():
    v1 = generation_config({"model_type": "qwen", "eos_token_id": 4096})
    assert v1 == {"chat_format": "chatml", "eos_token_id": 4096, "pad_token_id": 4096, "do_sample": False,
                  "max_new_tokens": 64}
    v2 = generation_config({"model_type": "qwen2_5_vl", "text_config": {"bos_token_id": 4096, "eos_token_id": 4098}})
    assert v2["eos_token_id"] == [4098, 4096] and v2["pad_token_id"] == 4096


def test_recipe_hashes_follow_the_files(tmp_path):
    (tmp_path / "r.toml").write_text("a = 1\n")
    before = recipe_hashes(tmp_path, ["r.toml"])
    (tmp_path / "r.toml").write_text("a = 2\n")
    assert recipe_hashes(tmp_path, ["r.toml"]) != before
