"""Training metrics: a CSV (always), TensorBoard scalars (when installed), a PNG loss curve (matplotlib, Agg).

    OUTPUT_DIR/metrics.csv    step,split,loss,lr,grad_norm,tokens,tokens_per_s,elapsed_s,precision
                              (split: train | val; precision: the compute precision, bf16 | fp32)
    OUTPUT_DIR/loss.png       train and val loss against step
    OUTPUT_DIR/tb/            TensorBoard event files

On resume the CSV is cut back to the checkpoint's step (rows after it are replayed by the resumed run,
and a half-written last line from a killed process is dropped), so the file never holds a step twice.
Only rank 0 creates one of these with enabled=True; the others get a no-op logger.
Must not: compute metrics or decide when to log.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from qwenvl.train.dense import TARGETS

COLUMNS = ("step", "split", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s", "precision",
           # train/dense.py target accuracies on the last batch (empty without aux.dense)
           *(f"dense_{name}" for name, _ in TARGETS),
           "point_mass")  # train/point.py: the pointing layer's attention mass on the named object


class MetricsLog:
    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.csv_path = self.dir / "metrics.csv"
        self.png_path = self.dir / "loss.png"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def start(self, resume_step: int | None) -> None:
        """A fresh CSV (resume_step None) or the old one cut back to rows with step <= resume_step."""
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        keep = [r for r in self.rows() if resume_step is not None and int(r["step"]) <= resume_step]
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(keep)
        os.replace(tmp, self.csv_path)

    def rows(self) -> list[dict]:
        """Complete rows of the CSV (a truncated last line is skipped)."""
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline="") as f:
            out = []
            for r in csv.DictReader(f):
                if all(r.get(c) not in (None, "") for c in ("step", "split", "loss")) and None not in r:
                    try:
                        int(r["step"])
                        float(r["loss"])
                    except ValueError:
                        continue
                    out.append(r)
            return out

    def log(self, split: str, step: int, **values: float) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **{k: _fmt(v) for k, v in values.items() if k in COLUMNS}}
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float):  # not the precision string
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def plot(self) -> Path | None:
        """Write loss.png (atomically); None when matplotlib is missing or nothing was logged."""
        if not self.enabled:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        rows = self.rows()
        if not rows:
            return None
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for split, style in (("train", "-"), ("val", "o-")):
            pts = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == split]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{split} loss", markersize=3)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = self.png_path.with_suffix(".tmp.png")
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, self.png_path)
        return self.png_path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(v: float | int | str | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)
