"""Write a random-weight Qwen2.5-VL checkpoint shaped for benchmarking (once per folder).

LM shaped like Qwen2-VL-2B (hidden 1536, 28 layers, 12 heads / 2 KV heads, MLP 8960, vocab 151936, tied
embeddings, M-RoPE [16, 24, 24], theta 1e6) + the real Qwen2.5-VL ViT (depth 32, width 1280, MLP 3420,
16 heads, window 112 px, full attention in blocks 7/15/23/31, output 1536). ~2.2 B parameters, bf16,
saved by transformers' save_pretrained in 1 GB shards, so the reference loads it natively and our loader
reads an index plus several shards. Weights are N(0, 0.02) (norm weights 1, biases 0): activations stay
finite in bf16; the generated text is meaningless.

    python bench/make_bench_checkpoint.py [FOLDER] [--force]

Test/bench only: needs transformers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

DEFAULT_FOLDER = "/tmp/qwenvl-bench/qwen2_5_vl_1p5b"


def bench_config():
    from transformers import Qwen2_5_VLConfig

    rope = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}
    text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768,
                hidden_act="silu", rope_parameters=rope, tie_word_embeddings=True, use_sliding_window=False)
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=1536,
                  window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
                  hidden_act="silu", patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                            image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                            vision_end_token_id=151653, bos_token_id=151643, eos_token_id=151645)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():  # tied weights are yielded once
        leaf = name.rsplit(".", 2)
        is_norm = any(s in name for s in ("norm", "ln_q")) and name.endswith("weight")
        if is_norm:
            p.fill_(1.0)
        elif leaf[-1] == "bias":
            p.zero_()
        else:
            p.normal_(0.0, std, generator=g)


def make(folder: Path, seed: int = 0, shard: str = "1GB") -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    t0 = time.perf_counter()
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(bench_config())
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    model.tie_weights()
    randomize_(model, seed)
    model.eval()
    n = sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size=shard)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    print(f"wrote {folder}: {n / 1e9:.3f} B params, {len(shards)} shards, {time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=DEFAULT_FOLDER)
    ap.add_argument("--force", action="store_true", help="rewrite even if the folder holds a checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    folder = Path(args.folder)
    if (folder / "config.json").is_file() and not args.force:
        print(f"{folder} already holds a checkpoint (use --force to rewrite)")
        return
    torch.set_num_threads(2)
    make(folder, args.seed)


if __name__ == "__main__":
    main()
