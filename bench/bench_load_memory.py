"""Peak memory while loading the bench checkpoint: our loader vs transformers' from_pretrained, bf16.

Each loader runs in a fresh child process. The child imports what it needs (torch + qwenvl; plus the
transformers model class for the reference), reads its baseline VmRSS, loads, then reports
resource.getrusage(RUSAGE_SELF).ru_maxrss (peak RSS over the whole process) and the RSS split after
loading. Peak growth = ru_maxrss - baseline VmRSS; it is compared with the weight bytes (sum of the
tensor byte ranges in the safetensors headers). Target for ours: peak growth <= 1.3 x weight bytes.
Note: RSS counts file-backed pages a process has mapped and touched (transformers reads safetensors
through mmap) as well as anonymous memory; the RssAnon / RssFile split after loading shows which.
transformers can return with weights still lazy (mmap views not yet read), so a second measurement
is taken after reading one element of every 4 KiB page of every parameter (both loaders).

    python bench/bench_load_memory.py [--ckpt FOLDER] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_CKPT = "/tmp/qwenvl-bench/qwen2_5_vl_1p5b"
ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.3
MiB = 1024**2


def weight_bytes(folder: Path) -> tuple[int, int]:
    """(sum of tensor bytes over all shards' safetensors headers, number of shards)."""
    total, files = 0, sorted(folder.glob("*.safetensors"))
    for p in files:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        total += sum(m["data_offsets"][1] - m["data_offsets"][0] for m in header.values())
    return total, len(files)


def _status() -> dict[str, int]:
    """VmRSS / RssAnon / RssFile / VmHWM of this process, bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


def child(which: str, folder: str) -> None:
    import gc
    import resource

    import torch

    import qwenvl  # noqa: F401  (baseline includes the package, as the task defines it)
    from qwenvl.weights import load_model

    torch.set_num_threads(2)
    if which == "hf":
        from transformers import Qwen2_5_VLForConditionalGeneration
    gc.collect()
    base = _status()
    t0 = time.perf_counter()
    if which == "ours":
        model = load_model(folder, dtype=torch.bfloat16)
    else:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16).eval()
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    after = _status()
    # transformers may leave weights as lazy mmap views whose pages are read at the first forward;
    # read one element per 4 KiB page of every parameter so both loaders are compared fully resident
    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().reshape(-1)
            flat[:: max(1, 4096 // p.element_size())].float().sum()
    peak_touched = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    touched = _status()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps(dict(base=base, peak=peak, after=after, seconds=secs, param_bytes=params,
                          peak_touched=peak_touched, touched=touched)))


def run_child(which: str, folder: str) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--ckpt", folder]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{which} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=DEFAULT_CKPT)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child", choices=("ours", "hf"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.ckpt)
        return
    wb, shards = weight_bytes(Path(args.ckpt))
    print(f"\n## Loading memory ({time.strftime('%Y-%m-%d %H:%M:%S %z')})\n")
    print(f"- checkpoint {args.ckpt}: {shards} shards, weight bytes {wb / MiB:.0f} MiB ({wb / 1e9:.3f} GB); "
          f"fresh child process per row, baseline = VmRSS after imports; target peak growth <= {TARGET} x weights\n")
    print("| loader | baseline RSS MiB | peak RSS MiB | peak growth MiB | growth / weight bytes | "
          "RSS after load (anon + file) MiB | load s | target met | after touching every weight page: "
          "peak growth / weight bytes, RSS (anon + file) MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for which, label in (("ours", "qwenvl.weights.load_model"), ("hf", "transformers from_pretrained")):
        for _ in range(args.repeats):
            r = run_child(which, args.ckpt)
            base, growth = r["base"]["VmRSS"], r["peak"] - r["base"]["VmRSS"]
            a = r["after"]
            ratio = growth / wb
            print(f"| {label} | {base / MiB:.0f} | {r['peak'] / MiB:.0f} | {growth / MiB:.0f} | {ratio:.3f} | "
                  f"{a['VmRSS'] / MiB:.0f} ({a['RssAnon'] / MiB:.0f} + {a['RssFile'] / MiB:.0f}) | "
                  f"{r['seconds']:.1f} | {'yes' if ratio <= TARGET else 'no'} | "
                  f"{(r['peak_touched'] - base) / wb:.3f}, {r['touched']['VmRSS'] / MiB:.0f} "
                  f"({r['touched']['RssAnon'] / MiB:.0f} + {r['touched']['RssFile'] / MiB:.0f}) |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the qwenvl next to bench/
    main()
