"""Command-line helpers shared by the scripts: flag spelling, bounded numbers, the data flags
(train.py, data.py, evaluate.py), the model a checkpoint holds, and the image settings a
checkpoint was trained with (evaluate.py and infer.py apply them unless a flag says otherwise)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from plumbing.intensity import PixelRule
from plumbing.tiles import MAX_TILE, MIN_TILE, check_tile, default_overlap
from plumbing.weights import load_tensors, model_name_in

# The data flags: how a dataset is read. Their defaults are Config's and data.Options'.
DATA_FLAGS = ("complex", "crowd_instances", "ignore_index", "stuff_instances")
# What a model was trained to see: evaluate.py and infer.py default to the checkpoint's values.
IMAGE_SETTINGS = ("max_side", "min_area", "crowd_instances", "ignore_index", "stuff_instances")
IMAGE_SETTINGS += ("normalize", "channels", "tile", "tile_overlap")  # issue 26: pixels, tiles
# their fallbacks where a checkpoint has none (train.py's defaults; -1: an eighth of --tile)
PIXEL_DEFAULTS = {"normalize": "auto", "channels": ""}
TILE_DEFAULTS = {"tile": 0, "tile_overlap": -1}
MAX_SIDE = 2048  # --max-side at most, as train.py's bound


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


def trained_help(fallback) -> str:
    """The end of the help of a flag that defaults to the checkpoint's setting."""
    shown = ("on" if fallback else "off") if isinstance(fallback, bool) else fallback
    return f"; default: as the checkpoint was trained, else {shown}"


def add_data_flags(
    group,
    complex: bool = True,
    default=argparse.SUPPRESS,
    crowd: bool = True,
    fallback: dict | None = None,
) -> None:
    """--complex (if asked), --crowd-instances (if asked), --ignore-index and --stuff-instances
    on `group` (a parser
    or an argument group). `default` is each flag's default (None: 'not given', for flags that
    fall back to a checkpoint's settings; SUPPRESS: the parser's set_defaults decide). With
    `fallback` ({setting: value without a trained one}, see add_trained_flags) the flags default
    to None, their help names the fallback, and --no-crowd-instances can undo a trained one."""
    said = (lambda k: "") if fallback is None else (lambda k: trained_help(fallback[k]))
    default = None if fallback is not None else default
    if complex:
        group.add_argument(
            "--complex", action="store_true", default=default, help="LabPics: add the Complex/ part"
        )
    if crowd:
        group.add_argument(
            "--crowd-instances",
            action="store_true" if fallback is None else argparse.BooleanOptionalAction,
            default=default,
            help="COCO: crowd regions (iscrowd=1) are instances too (CVAT writes mask shapes so)"
            + said("crowd_instances"),
        )
    group.add_argument(
        "--ignore-index",
        type=int,
        default=default,
        help="value of 8-bit / palette label PNGs that is no instance (VOC's void); -1: none"
        + said("ignore_index"),
    )
    if fallback is None or "stuff_instances" in fallback:
        group.add_argument(
            "--stuff-instances",
            action="store_true" if fallback is None else argparse.BooleanOptionalAction,
            default=default,
            help="COCO panoptic: stuff segments (isthing 0) are instances too (datumaro marks all "
            "so)" + said("stuff_instances"),
        )


def add_trained_flags(group, fallback: dict) -> None:
    """The IMAGE_SETTINGS named in `fallback` ({setting: its value where the checkpoint has
    none}) as flags on `group`, each None when not given: apply_trained(args, checkpoint,
    fallback) then fills it with the checkpoint's value, else the fallback."""
    if "max_side" in fallback:
        group.add_argument(
            "--max-side",
            type=bounded_int(
                1, MAX_SIDE, " (SAM 2 sees images at 1024 px; larger only costs memory)"
            ),
            help="resize images so the longer side is this" + trained_help(fallback["max_side"]),
        )
    if "min_area" in fallback:
        group.add_argument(
            "--min-area",
            type=bounded_int(0, MAX_SIDE * MAX_SIDE, " (pixels of a resized image)"),
            help="drop instances under this many pixels (resized)"
            + trained_help(fallback["min_area"]),
        )
    if "ignore_index" in fallback:
        add_data_flags(group, complex=False, crowd="crowd_instances" in fallback, fallback=fallback)
    add_pixel_flags(group, fallback)


def add_pixel_flags(group, fallback: dict) -> None:
    """--normalize / --channels and --tile / --tile-overlap (issue 26) where `fallback` names
    them, each None when not given (apply_trained fills it in)."""
    if "normalize" in fallback:
        group.add_argument(
            "--normalize",
            help="pixel values -> 0-255: auto, percentile:LO,HI, range:MIN,MAX or none "
            "(docs/data.md)" + trained_help(fallback["normalize"]),
        )
        group.add_argument(
            "--channels",
            help="file channels -> R,G,B, e.g. 1,0,0 or 2 (gray)"
            + trained_help(fallback["channels"] or "default"),
        )
    if "tile" in fallback:
        group.add_argument(
            "--tile",
            type=bounded_int(0, MAX_TILE, " (0: no tiles)"),
            help=f"work on N x N tiles of the full-resolution image ({MIN_TILE}-{MAX_TILE}; 0: "
            "the whole image)" + trained_help(fallback["tile"]),
        )
        group.add_argument(
            "--tile-overlap",
            type=bounded_int(-1, MAX_TILE // 2, " (-1: an eighth of --tile)"),
            help="pixels neighbouring tiles share" + trained_help("an eighth of --tile"),
        )


def pixel_settings(args: argparse.Namespace) -> tuple[PixelRule, int, int]:
    """(the pixel rule, tile, overlap) that apply_trained left in `args`; ValueError naming the
    flag when one is bad. tile 0: no tiles."""
    rule = PixelRule.parse(args.normalize, args.channels)
    tile = getattr(args, "tile", 0) or 0
    overlap = getattr(args, "tile_overlap", -1)
    overlap = default_overlap(tile) if overlap is None or overlap < 0 else overlap
    if tile:
        check_tile(tile, overlap)
    return rule, tile, overlap


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
    when it has it (printing one line naming those that differ from `defaults`), else from
    `defaults`. Returns what came from the checkpoint."""
    trained = {k: v for k, v in trained_settings(checkpoint).items() if k in defaults}
    used = {k: v for k, v in trained.items() if getattr(args, k, None) is None}
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, used.get(k, v))
    if shown := ", ".join(as_flag(k, v) for k, v in used.items() if v != defaults[k]):
        print(
            f"settings trained with, from {checkpoint}: {shown} (a flag overrides)", file=sys.stderr
        )
    return used
