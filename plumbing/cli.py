"""Command-line helpers shared by the scripts: flag spelling, bounded numbers, the data flags
(train.py, data.py, evaluate.py), the model a checkpoint holds, and the image settings a
checkpoint was trained with (evaluate.py and infer.py apply them unless a flag says otherwise)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from model import load_tensors, model_name_in

# The data flags: how a dataset is read. Their defaults are Config's and data.Options'.
DATA_FLAGS = ("complex", "crowd_instances", "ignore_index")
# What a model was trained to see: evaluate.py and infer.py default to the checkpoint's values.
IMAGE_SETTINGS = ("max_side", "min_area", "crowd_instances", "ignore_index")


def flag(name: str) -> str:
    """Config field -> its flag's name: max_side -> max-side."""
    return name.replace("_", "-")


def as_flag(name: str, value) -> str:
    """How `value` of Config field `name` is typed on the command line."""
    if value is None or value is False:
        return f"no --{flag(name)}"
    return f"--{flag(name)}" if value is True else f"--{flag(name)} {value}"


def bounded_int(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: an int from low to high (`why` says what a larger one costs)."""

    def parse(s: str) -> int:
        v = int(s)
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {v}{why}")
        return v

    return parse


def fraction(s: str) -> float:
    """An argparse type: a float from 0 to 1."""
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {v}")
    return v


def add_data_flags(group, complex: bool = True, default=argparse.SUPPRESS) -> None:
    """--complex (if asked), --crowd-instances and --ignore-index on `group` (a parser or an
    argument group). `default` is each flag's default (None: 'not given', for flags that fall
    back to a checkpoint's settings; SUPPRESS: the parser's set_defaults decide)."""
    if complex:
        group.add_argument(
            "--complex", action="store_true", default=default, help="LabPics: add the Complex/ part"
        )
    group.add_argument(
        "--crowd-instances",
        action="store_true",
        default=default,
        help="COCO: crowd regions (iscrowd=1) are instances too (CVAT writes mask shapes so)",
    )
    group.add_argument(
        "--ignore-index",
        type=int,
        default=default,
        help="value of 8-bit / palette label PNGs that is no instance (VOC's void); -1: none",
    )


def pick_model(name: str | None, checkpoint: str | None) -> str:
    """The SAM 2 size to build: `name` (--model), else the one `checkpoint` holds (train.py
    stores it; a foreign file is recognised by its shapes), else 'small'. ValueError when both
    are known and differ."""
    stored = None
    if checkpoint and checkpoint.lower() != "none" and Path(checkpoint).is_file():
        stored = model_name_in(checkpoint)
    if name and stored and name != stored:
        raise ValueError(f"--checkpoint {checkpoint} was trained with --model {stored}, not {name}")
    return name or stored or "small"


def trained_settings(checkpoint: str | None) -> dict:
    """The IMAGE_SETTINGS that train.py saved in `checkpoint`'s config ({} for official or
    foreign weights, or a file without them)."""
    if not checkpoint or checkpoint.lower() == "none" or not Path(checkpoint).is_file():
        return {}
    try:
        cfg = load_tensors(checkpoint, mmap=True).get("config") or {}
    except Exception:  # unreadable: load_model says why, with the file's name
        return {}
    return {k: cfg[k] for k in IMAGE_SETTINGS if k in cfg}


def apply_trained(args: argparse.Namespace, checkpoint: str | None, defaults: dict) -> dict:
    """Fill each of `defaults`' settings that `args` leaves None: from the checkpoint's config
    when it has it (printing one line saying so), else from `defaults`. Returns what came from
    the checkpoint."""
    trained = {k: v for k, v in trained_settings(checkpoint).items() if k in defaults}
    used = {k: v for k, v in trained.items() if getattr(args, k, None) is None}
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, used.get(k, v))
    if used:
        shown = ", ".join(as_flag(k, v) for k, v in used.items())
        print(
            f"settings trained with, from {checkpoint}: {shown} (a flag overrides)", file=sys.stderr
        )
    return used
