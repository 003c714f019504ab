"""Command line: each subcommand is a thin call into one library function.

    qwenvl chat MODEL "question" --image a.png [--image b.png] [--video clip.mp4] [--draw boxes.png]
    qwenvl demo
    qwenvl train RECIPE.toml [--set key=value ...] [--resume]     (torchrun --nproc_per_node N -m qwenvl train ...)
Errors a user can cause (bad path, bad image, bad checkpoint) print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _chat(args: argparse.Namespace) -> int:
    import qwenvl

    pipe = qwenvl.load(args.model, dtype=args.dtype, device=args.device)
    content = [{"type": "image", "image": p} for p in args.image]
    content += [{"type": "video", "video": p} for p in args.video]
    content.append({"type": "text", "text": args.prompt})
    out = pipe.chat([{"role": "user", "content": content}], max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, seed=args.seed)
    print(out.text)
    if out.boxes and args.draw and args.image:
        from qwenvl.processing.draw import draw_boxes
        from qwenvl.processing.grounding import Box
        from qwenvl.processing.image import load_image

        draw_boxes(load_image(args.image[-1]), [Box(**b) for b in out.boxes]).save(args.draw)
        print(f"boxes drawn: {args.draw}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Ask the shipped model about held-out generated images; print answers and write a box overlay."""
    import qwenvl
    from qwenvl.data.synth import make_sample, resolve_config
    from qwenvl.pipeline import DEFAULT_MODEL, resolve_model
    from qwenvl.processing.draw import draw_boxes
    from qwenvl.processing.grounding import Box

    try:
        folder = resolve_model(None)
    except FileNotFoundError:
        print(f"The default model {DEFAULT_MODEL!r} is not shipped in this checkout. Run "
              "`qwenvl chat CHECKPOINT_FOLDER \"question\" --image IMG` on a checkpoint folder.", file=sys.stderr)
        return 1
    pipe = qwenvl.load(folder, dtype=args.dtype, device=args.device)
    size = pipe.model.cfg.vision.image_size
    cfg = resolve_config(seed=args.seed or 0, splits=(0.9, 0.05, 0.05), image_size=size, family=pipe.family,
                         langs=("en",))
    boxes_img = None
    for task in ("vqa", "count", "ocr", "grounding"):
        rec, images = make_sample(cfg, task, "test", 0)  # test split: content never seen in training
        rel, img = images[0]
        path = Path(args.out_dir) / Path(rel).name
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        question = next(p["text"] for p in rec["messages"][0]["content"] if p["type"] == "text")
        out = pipe.chat([{"role": "user", "content": [{"type": "image", "image": str(path)},
                                                      {"type": "text", "text": question}]}],
                        max_new_tokens=args.max_new_tokens or 48, temperature=0.0)
        print(f"[{task}] image: {path}\n  Q: {question}\n  A: {out.text}\n  expected: {rec['meta'].get('answer')}")
        if out.boxes:
            boxes_img = Path(args.draw)
            draw_boxes(img, [Box(**b) for b in out.boxes]).save(boxes_img)
    if boxes_img:
        print(f"box overlay: {boxes_img}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import json
    import os

    from qwenvl.train.config import load_config
    from qwenvl.train.loop import train

    cfg = load_config(args.recipe, args.set)
    try:
        summary = train(cfg, resume=args.resume)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: qwenvl train {args.recipe} --resume", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone reports
        brief = {k: v for k, v in summary.items() if k not in ("losses", "val_losses")}
        print(json.dumps(brief, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwenvl", description="Qwen-VL family models: chat, serve, train, eval")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chat", help="ask one question about images / a video")
    c.add_argument("model", help="checkpoint folder or the shipped model name")
    c.add_argument("prompt")
    c.add_argument("--image", action="append", default=[])
    c.add_argument("--video", action="append", default=[])
    c.add_argument("--draw", help="write the last image with the answer's boxes drawn to this PNG")
    d = sub.add_parser("demo", help="run the shipped default model on a generated image")
    d.add_argument("--draw", default="qwenvl-demo/boxes.png", help="where to draw the answer's boxes")
    d.add_argument("--out-dir", default="qwenvl-demo", help="where the generated images are written")
    for q in (c, d):
        q.add_argument("--max-new-tokens", type=int, default=None)
        q.add_argument("--temperature", type=float, default=None)
        q.add_argument("--seed", type=int, default=None)
        q.add_argument("--dtype", default="float32",
                       help="float32 | bfloat16 | auto (bf16 where the CPU has avx512_bf16 or AMX, else fp32)")
        q.add_argument("--device", default="cpu")
    t = sub.add_parser("train", help="train from a TOML recipe (recipes/*.toml)")
    t.add_argument("recipe", help="path to a recipe, e.g. recipes/stage1_pretrain.toml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set schedule.max_steps=10 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    t.set_defaults(func=_train)
    # synth and eval parse their own arguments (main() hands them the rest of argv); listed for --help
    sub.add_parser("synth", help="generate the synthetic dataset (qwenvl synth --help)", add_help=False)
    sub.add_parser("eval", help="score a model on a JSONL split (qwenvl eval --help)", add_help=False)
    c.set_defaults(func=_chat)
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "synth":
        from qwenvl.data.synth import main_synth

        return main_synth(argv[1:])
    if argv and argv[0] == "eval":
        from qwenvl.eval.runner import main_eval

        try:
            return main_eval(argv[1:])
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
