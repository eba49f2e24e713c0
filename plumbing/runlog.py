"""A run's log: log.csv (one row per logged step, kept up to the step a resume starts from)
and curves.png drawn from it."""

from __future__ import annotations

import csv
from pathlib import Path

LOG_FIELDS = ["step", "loss", "train_iou", "val_iou", "lr", "seconds"]


def open_log(path: Path, resume_step: int):
    """log.csv, keeping the rows up to `resume_step` (later ones were never checkpointed).
    Returns (the open file, its csv.DictWriter of LOG_FIELDS)."""
    rows = []
    if resume_step > 0 and path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
    f = open(path, "w", newline="")
    w = csv.DictWriter(f, LOG_FIELDS)
    w.writeheader()
    w.writerows(rows)
    f.flush()
    return f, w


def plot_curves(log_path: Path, png: Path) -> None:
    """curves.png: training loss and train/val IoU against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r[key] not in ("", None)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(*series("loss"))
    a.set(xlabel="step", ylabel="loss", title="training loss")
    b.plot(*series("train_iou"), label="train (running)")
    b.plot(*series("val_iou"), "o-", label="validation")
    b.set(xlabel="step", ylabel="IoU", title="mask IoU", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
