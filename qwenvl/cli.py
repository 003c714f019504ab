"""Command line: each subcommand is a thin call into one library function.

    qwenvl chat MODEL "question" --image a.png [--image b.png] [--video clip.mp4] [--draw boxes.png]
    qwenvl chat MODEL                        (interactive: /image PATH, /reset, /quit; answers stream)
    qwenvl caption MODEL DIR|GLOB --out captions.jsonl [--prompt ...] [--batch-size 8] [--no-progress]
        (resumable; under torchrun each rank takes files[rank::world] and writes captions.jsonl.rank{r})
    qwenvl ground MODEL IMAGE "phrase" [--out overlay.png]   (boxes as JSON, original pixels)
    qwenvl chat|caption|ground --endpoint URL [--api-key KEY] [--model NAME] [--family F] ...   (no MODEL:
        the same commands against an OpenAI-compatible server, e.g. `qwenvl serve`, vLLM, a cloud's compatible mode)
    qwenvl info MODEL [--json]
    qwenvl serve [MODEL] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--allow-remote-images]
        [--allow-local-files DIR]          (OpenAI-compatible API at /v1, web page at /)
    qwenvl demo
    qwenvl train RECIPE.toml [--set key=value ...] [--resume]     (torchrun --nproc_per_node N -m qwenvl train ...)
Errors a user can cause (bad path, bad image, bad checkpoint) print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _load(args: argparse.Namespace):
    import qwenvl

    return qwenvl.load(args.model, dtype=args.dtype, device=args.device, quantize=getattr(args, "quantize", None),
                       compile=getattr(args, "compile", False))


def _backend(args: argparse.Namespace):
    """The local pipeline, or with --endpoint a client of that server with the same chat / generate_batch."""
    if not args.endpoint:
        return _load(args)
    from qwenvl.apps.remote import RemotePipeline

    return RemotePipeline(args.endpoint, api_key=args.api_key, model=args.remote_model, family=args.family)


# With --endpoint there is no MODEL positional: the values given fill the ones after it.
REMOTE_POSITIONALS = {"chat": ("prompt",), "caption": ("source",), "ground": ("image", "phrase")}


def _check_positionals(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    names = REMOTE_POSITIONALS.get(args.cmd)
    if names is None:
        return
    given = [v for v in (getattr(args, n) for n in ("model", *names)) if v is not None]
    if not args.endpoint:
        required = ("model",) if args.cmd == "chat" else ("model", *names)
        if len(given) < len(required):
            p.error(f"the following arguments are required: {', '.join(required[len(given):])}")
        return
    if len(given) > len(names):
        p.error(f"with --endpoint there is no MODEL argument; name the model with --model (got {given[0]!r})")
    required = () if args.cmd == "chat" else names
    if len(given) < len(required):
        p.error(f"the following arguments are required: {', '.join(required[len(given):])}")
    args.model = None
    for n in names:
        setattr(args, n, given.pop(0) if given else None)


def _gen_kw(args: argparse.Namespace) -> dict:
    """Sampling and per-call processor options shared by chat / caption / ground (unset ones left out)."""
    kw = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed,
          "min_pixels": args.min_pixels, "max_pixels": args.max_pixels}
    return {k: v for k, v in kw.items() if v is not None}


def _chat(args: argparse.Namespace) -> int:
    if args.prompt is None:
        if args.image or args.video:
            raise ValueError("interactive chat takes images with /image PATH, not --image / --video")
        from qwenvl.apps.repl import run_repl

        return run_repl(_backend(args), sys.stdin, sys.stdout, sys.stderr, **_gen_kw(args))
    pipe = _backend(args)
    content = [{"type": "image", "image": p} for p in args.image]
    content += [{"type": "video", "video": p} for p in args.video]
    content.append({"type": "text", "text": args.prompt})
    out = pipe.chat([{"role": "user", "content": content}], **_gen_kw(args))
    print(out.text)
    if out.boxes and args.draw and args.image:
        from qwenvl.processing.draw import draw_boxes
        from qwenvl.processing.grounding import Box
        from qwenvl.processing.image import load_image

        draw_boxes(load_image(args.image[-1]), [Box(**b) for b in out.boxes]).save(args.draw)
        print(f"boxes drawn: {args.draw}", file=sys.stderr)
    return 0


def _caption(args: argparse.Namespace) -> int:
    from qwenvl.apps.caption import caption_files, list_images, shard

    files, out = shard(list_images(args.source), Path(args.out))
    counts = caption_files(_backend(args), files, out, prompt=args.prompt, batch_size=args.batch_size,
                           progress=not args.no_progress, **_gen_kw(args))
    print(f"{out}: {counts['done']} captioned, {counts['errors']} errors, {counts['skipped']} already done",
          file=sys.stderr)
    return 0


def _ground(args: argparse.Namespace) -> int:
    import json

    from qwenvl.apps.ground import ground

    res = ground(_backend(args), args.image, args.phrase, args.out, **_gen_kw(args))
    print(json.dumps(res["boxes"]))
    if args.out:
        print(f"overlay: {args.out}", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from qwenvl.apps.info import format_info, model_info

    info = model_info(_load(args), args.device, args.min_pixels, args.max_pixels)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from qwenvl.pipeline import DEFAULT_MODEL

    try:
        import uvicorn

        from qwenvl.server.app import ServerOptions, create_app
        from qwenvl.server.images import ImagePolicy
    except ImportError as e:
        raise ValueError(f"the server needs the 'serve' extra: pip install 'qwenvl[serve]' ({e})") from None
    local = Path(args.allow_local_files).expanduser() if args.allow_local_files else None
    if local is not None and not local.is_dir():
        raise ValueError(f"--allow-local-files {local}: not a directory")
    pipe = _load(args)
    engine_kw = {"n_slots": args.slots, "max_len": args.max_len}
    pipe.configure_engine(**{k: v for k, v in engine_kw.items() if v is not None})
    options = ServerOptions(
        model_name=args.served_model_name or Path(args.model or DEFAULT_MODEL).name,
        api_key=args.api_key or os.environ.get("QWENVL_API_KEY") or None, max_images=args.max_images,
        max_body_bytes=int(args.max_body_mb * 2**20), max_pending=args.max_pending,
        image_policy=ImagePolicy(allow_remote=args.allow_remote_images, local_root=local))
    app = create_app(pipe, options)
    eng = pipe.engine
    dt = str(pipe.dtype).removeprefix("torch.")
    print(f"serving {options.model_name} ({pipe.family}, {dt}, {eng.pool.n_slots} slots x {eng.pool.max_len} tokens) "
          f"on http://{args.host}:{args.port}  (web page at /, API at /v1)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Ask the shipped model about held-out generated images; print answers and write a box overlay."""
    import math

    import qwenvl
    from qwenvl import families
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
    from qwenvl.train.ship import accuracy_line

    line = accuracy_line(folder)
    print(f"{folder.name} ({pipe.family}, a tiny model trained on 2 CPU cores): {line or 'no eval report shipped'}")
    # the size the model trained on: v1's fixed input side, else the side of the processor's pixel budget
    fixed = families.of(pipe.model.cfg).fixed_resolution
    size = pipe.model.cfg.vision.image_size if fixed else math.isqrt(pipe.processor.image_cfg.max_pixels)
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
                        max_new_tokens=args.max_new_tokens or 128, temperature=0.0)
        print(f"[{task}] image: {path}\n  Q: {question}\n  A: {out.text}\n  expected: {rec['meta'].get('answer')}")
        if out.boxes:
            boxes_img = Path(args.draw) if args.draw else Path(args.out_dir) / "boxes.png"
            boxes_img.parent.mkdir(parents=True, exist_ok=True)
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
    p = argparse.ArgumentParser(prog="qwenvl",
                                description="Qwen-VL family models: chat, caption, ground, serve, train, eval")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chat", help="ask one question about images / a video; no question: interactive")
    c.add_argument("model", nargs="?", help="checkpoint folder or the shipped model name (none with --endpoint)")
    c.add_argument("prompt", nargs="?", help="the question (leave out for an interactive chat)")
    c.add_argument("--image", action="append", default=[])
    c.add_argument("--video", action="append", default=[])
    c.add_argument("--draw", help="write the last image with the answer's boxes drawn to this PNG")
    d = sub.add_parser("demo", help="run the shipped default model on a generated image")
    d.add_argument("--draw", help="where to draw the answer's boxes (default: boxes.png in --out-dir)")
    d.add_argument("--out-dir", default="qwenvl-demo", help="where the generated images are written")
    a = sub.add_parser("caption", help="caption a folder / glob of images into a resumable JSONL")
    a.add_argument("model", help="checkpoint folder or shipped model name (none with --endpoint)")
    a.add_argument("source", nargs="?", help="a directory (searched recursively) or a glob such as 'imgs/*.jpg'")
    a.add_argument("--out", required=True, help="JSONL output; under torchrun each rank writes OUT.rank{r}")
    a.add_argument("--prompt", default="Describe the image.")
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = sub.add_parser("ground", help="find a phrase in an image: boxes as JSON (original pixels)")
    g.add_argument("model", help="checkpoint folder or shipped model name (none with --endpoint)")
    g.add_argument("image")
    g.add_argument("phrase", nargs="?", help='what to find, e.g. "the red circle"')
    g.add_argument("--out", help="write the image with the boxes drawn to this PNG")
    s = sub.add_parser("serve", help="OpenAI-compatible API server + web page over the engine")
    s.add_argument("model", nargs="?", default=None,
                   help="checkpoint folder or shipped model name (default: qwenvl-tiny)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set QWENVL_API_KEY)")
    s.add_argument("--served-model-name", default=None, help="the model id clients send (default: the model name)")
    s.add_argument("--allow-remote-images", action="store_true",
                   help="fetch http(s) image URLs (public addresses only; size limit and timeout)")
    s.add_argument("--allow-local-files", metavar="DIR", default=None, help="allow file:// images inside DIR")
    s.add_argument("--max-images", type=int, default=16, help="image parts per request")
    s.add_argument("--max-body-mb", type=float, default=64.0, help="request body limit in MiB")
    s.add_argument("--max-pending", type=int, default=64, help="requests waiting for a slot before 429")
    s.add_argument("--slots", type=int, default=None, help="concurrent sequences in the KV pool")
    s.add_argument("--max-len", type=int, default=None, help="context length per slot")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_serve)
    i = sub.add_parser("info", help="family, parameter counts, auto dtype, image tokens")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    for q in (c, d, a, g, i, s):
        q.add_argument("--dtype", default="auto",
                       help="auto (default: bf16 where the CPU has avx512_bf16 or AMX, else fp32) | float32 | bfloat16")
        q.add_argument("--device", default="cpu")
    for q in (c, d, a, g):
        q.add_argument("--max-new-tokens", type=int, default=None)
        q.add_argument("--temperature", type=float, default=None)
        q.add_argument("--seed", type=int, default=None)
    for q in (c, a, g, i):
        q.add_argument("--min-pixels", type=int, default=None, help="image pixel budget floor (v2+ processors)")
        q.add_argument("--max-pixels", type=int, default=None, help="image pixel budget ceiling (v2+ processors)")
    from qwenvl.config import FAMILY_NAMES

    for q in (c, a, g):
        q.add_argument("--endpoint", metavar="URL", default=None,
                       help="an OpenAI-compatible server's base URL (e.g. http://127.0.0.1:8000/v1) instead of a "
                            "local model; leave out MODEL (--batch-size: requests in flight)")
        q.add_argument("--api-key", metavar="KEY", default=None,
                       help="with --endpoint (default: $OPENAI_API_KEY, then $DASHSCOPE_API_KEY)")
        q.add_argument("--model", dest="remote_model", metavar="NAME", default=None,
                       help="with --endpoint: the model id (default: the first the server lists)")
        q.add_argument("--family", choices=FAMILY_NAMES, default=None,
                       help="with --endpoint, for servers that send no boxes: the box convention to parse the "
                            "text with (default: the family the server lists, else qwen3_vl for a 'qwen3' model "
                            "name, else qwen2_5_vl: pixels of the resized input)")
    for q in (c, a, g, s):
        q.add_argument("--quantize", choices=("int8", "int4", "bf16"), default=None,
                       help="weight-only decoder quantization (bf16: bf16 weights computed in fp32)")
        q.add_argument("--compile", action="store_true",
                       help="decode steps through torch.compile: faster tokens after ~30 s of compilation")
    t = sub.add_parser("train", help="train from a TOML recipe (recipes/*.toml)")
    t.add_argument("recipe", help="path to a recipe, e.g. recipes/stage1_pretrain.toml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set schedule.max_steps=10 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    t.set_defaults(func=_train)
    # synth and eval parse their own arguments (main() hands them the rest of argv); listed for --help
    sub.add_parser("synth", help="generate the synthetic dataset (qwenvl synth --help)", add_help=False)
    sub.add_parser("eval", help="score a model on a JSONL split (qwenvl eval --help)", add_help=False)
    for q, f in ((c, _chat), (d, _demo), (a, _caption), (g, _ground), (i, _info)):
        q.set_defaults(func=f)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_positionals(parser, args)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
