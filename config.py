"""The run's configuration: Config (every option of train.py, saved in each checkpoint; the
defaults mirror the article), the bounds of the numbers that multiply memory or time, and the
command line. A new option is one field here, its flag in build_parser, and its bound in AT_MOST
if it costs memory or time (--resume refuses a change of it unless plumbing.checkpoints'
RESUME_MAY_CHANGE lists it).

    from config import Config, parse_args
    cfg = parse_args(["--demo"])            # what `python train.py --demo` runs
    cfg = Config(data="demo_data", model="tiny", checkpoint="none", steps=20)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

from evaluate import MAX_CLICKS as EVAL_CLICKS
from model import LORA_TARGETS, MODELS
from plumbing.cli import add_data_flags, flag
from plumbing.intensity import PixelRule
from plumbing.tiles import MAX_TILE, MIN_TILE, check_tile, default_overlap
from recipes import MAX_CLICKS, RECIPES


@dataclass
class Config:
    """Everything a run needs; saved in every checkpoint. Defaults mirror the article."""

    data: str = ""
    out: str = "runs/sam2"
    model: str = "small"
    checkpoint: str | None = None  # None: official weights (downloaded); "none": random init
    steps: int = 25000
    batch_size: int = 4
    max_masks: int = 32
    lr: float = 1e-5
    weight_decay: float = 4e-5
    score_weight: float = 0.05
    recipe: str = "article"
    clicks: int = 7
    save_every: int = 1000
    eval_every: int = 500
    log_every: int = 10
    eval_clicks: int = 20
    minutes: float = 0.0
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    demo: bool = False
    max_side: int = 1024
    min_area: int = 16
    complex: bool = False
    crowd_instances: bool = False
    stuff_instances: bool = False
    ignore_index: int = 255
    workers: int = 2
    cache: str = "auto"
    encode_batch: int = 8
    train_encoder: bool = False
    frames: int = 8
    objects: int = 3
    lr_schedule: str = "constant"
    clip_grad: float = 0.0  # 0: no clipping
    accumulate: int = 1
    ignore_memory: bool = False
    # issue 26: the pixel rule (plumbing.intensity) and training tiles (plumbing.tiles)
    normalize: str = "auto"
    channels: str = ""
    tile: int = 0  # 0: no tiles (each image resized whole to --max-side)
    tile_overlap: int = -1  # -1: tiles.default_overlap(tile)
    # issue 27: LoRA (peft) on the attention of the last --lora-blocks trunk blocks
    lora_rank: int = 0  # 0: off
    lora_blocks: int = 2  # the last stage of tiny and small
    lora_targets: str = "qkv"  # comma list of model.LORA_TARGETS
    lora_alpha: float | None = None  # peft's lora_alpha; None: the rank (scaling 1)
    lora_dropout: float = 0.0  # peft's lora_dropout
    # issue 28: the prompt-free instance head (autoseg.py) and its evaluation
    auto_decoder: bool = False  # --recipe auto implies it
    amg_images: int = 1  # validation images SAM 2's generator scores before training

    def __post_init__(self):  # also guards Config(...) built in a notebook
        at_least = {"steps": 1, "batch_size": 1, "max_masks": 1, "save_every": 1}
        at_least |= {"log_every": 1, "max_side": 1, "encode_batch": 1, "eval_every": 0}
        at_least |= {"workers": 0, "min_area": 0, "weight_decay": 0, "score_weight": 0}
        at_least |= {"clicks": 0, "eval_clicks": 0, "minutes": 0, "frames": 1, "objects": 1}
        at_least |= {"clip_grad": 0, "accumulate": 1, "lora_rank": 0, "lora_blocks": 1}
        at_least |= {"amg_images": 0}
        for name, low in at_least.items():
            if not getattr(self, name) >= low:
                raise ValueError(f"--{flag(name)} must be >= {low}, got {getattr(self, name)}")
        for name, (high, why) in AT_MOST.items():
            if getattr(self, name) > high:
                raise ValueError(f"--{flag(name)} {getattr(self, name)} is over {high}: {why}")
        if (n := self.batch_size * self.max_masks) > MAX_MASKS_PER_STEP:
            raise ValueError(
                f"--batch-size {self.batch_size} x --max-masks {self.max_masks} = {n} masks per "
                f"step, over {MAX_MASKS_PER_STEP}: memory and time per step grow with it (the "
                "default 4 x 32 already takes several GiB of GPU memory)"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.model not in MODELS:
            raise ValueError(f"--model {self.model!r} is not one of {', '.join(MODELS)}")
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.cache not in ("auto", "gpu", "cpu", "off"):
            raise ValueError(f"--cache must be auto, gpu, cpu or off, got {self.cache!r}")
        if not self.data:
            raise ValueError("--data is required (or use --demo)")
        if self.train_encoder and not RECIPES[self.recipe].train_encoder:
            raise ValueError(
                f"--recipe {self.recipe} trains on cached features: no --train-encoder"
            )
        self._check_lora()
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"--lr-schedule must be constant or cosine, got {self.lr_schedule!r}")
        self.check_pixels()
        if RECIPES[self.recipe].head:
            self.auto_decoder = True  # the recipe trains the head alone
        if self.auto_decoder and RECIPES[self.recipe].data != "images":
            raise ValueError(f"--auto-decoder is for image recipes, not --recipe {self.recipe}")
        if self.accumulate > 1 and not RECIPES[self.recipe].accumulate:
            raise ValueError(
                "--accumulate is for --recipe video (image recipes take more images a step: "
                "--batch-size)"
            )

    def check_pixels(self) -> None:
        """Issue 26's fields: the pixel rule parses; --tile (0 or MIN_TILE-MAX_TILE px) and
        --tile-overlap (-1: the default, an eighth of the tile) are in bounds."""
        PixelRule.parse(self.normalize, self.channels)
        if self.tile_overlap == -1 and self.tile:
            self.tile_overlap = default_overlap(self.tile)
        if self.tile:
            check_tile(self.tile, self.tile_overlap)
        elif self.tile_overlap not in (-1, 0):
            raise ValueError("--tile-overlap is the overlap of --tile's tiles: give --tile")

    def _check_lora(self) -> None:
        """Issue 27's bounds: rank, blocks (this model's trunk), targets, alpha, dropout."""
        if not self.lora_rank:
            return
        if self.train_encoder:
            raise ValueError(
                "--lora-rank with --train-encoder: LoRA adapts a frozen encoder; "
                "--train-encoder trains all of it (choose one)"
            )
        depth = TRUNK_BLOCKS.get(self.model.removesuffix("-2.0"))
        if depth and not 1 <= self.lora_blocks <= depth:
            raise ValueError(
                f"--lora-blocks must be 1..{depth} (the trunk blocks of --model {self.model}), "
                f"got {self.lora_blocks}"
            )
        bad = [t for t in self.targets() if t not in LORA_TARGETS]
        if bad or not self.targets():
            raise ValueError(
                f"--lora-targets must be a comma list of {', '.join(LORA_TARGETS)}, "
                f"got {self.lora_targets!r}"
            )
        if self.lora_alpha is not None and not (
            self.lora_alpha > 0 and math.isfinite(self.lora_alpha)
        ):
            raise ValueError(f"--lora-alpha must be a positive number, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")

    def targets(self) -> tuple[str, ...]:
        """--lora-targets as a tuple: "qkv,proj" -> ("qkv", "proj")."""
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())


# Hiera trunk blocks of each SAM 2 size (2.0 and 2.1 alike): --lora-blocks' upper bound
TRUNK_BLOCKS = {"tiny": 12, "small": 16, "base_plus": 24, "large": 48}

# Upper bounds of the numbers that multiply memory or time: past them a run would not fit any
# GPU, or one step would take minutes. Each with the reason its message gives.
AT_MOST = {
    "batch_size": (256, "images per step; memory and time per step grow with it"),
    "max_masks": (256, "masks per image per step; each costs decoder memory and time"),
    "max_side": (2048, "SAM 2 sees images at 1024 px; larger masks only cost memory"),
    "encode_batch": (64, "images per image-encoder call; its memory grows with it"),
    "workers": (64, "each DataLoader process holds its own copy of the dataset reader"),
    "clicks": (MAX_CLICKS, "each click is one more decoder pass per mask (Meta trains with 7)"),
    "eval_clicks": (EVAL_CLICKS, "each click is one more decoder pass per validation mask"),
    "frames": (64, "frames per clip; each keeps about 0.75 GiB of activations per object"),
    "objects": (16, "objects per clip; each keeps about 0.75 GiB of activations per frame"),
    "accumulate": (64, "clips per optimizer step (x --batch-size); time per step grows with it"),
    "lora_rank": (256, "LoRA adapters' rank; past the layers' width an adapter is not low rank"),
    "amg_images": (1000, "SAM 2's generator decodes 1024 clicks per image (minutes on a CPU)"),
}
MAX_MASKS_PER_STEP = 2048

# --demo: small enough to finish in a few minutes on a 2-core CPU
DEMO = dict(data="demo_data", out="runs/demo", model="tiny", steps=40, batch_size=2, max_masks=4)
DEMO |= dict(eval_every=20, save_every=20, log_every=5, eval_clicks=5)


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.set_defaults(**{f.name: f.default for f in dataclasses.fields(Config)})
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset folder or file (`python data.py PATH` shows its layout)")
    g.add_argument("--demo", action="store_true", help="make demo_data/ if absent; short tiny run")
    add_data_flags(g)
    g = p.add_argument_group("recipe")
    g.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="article: one click per mask, BCE + score loss; interactive: box or click, then "
        "--clicks correction clicks, focal + dice + IoU loss (SAM 2's trainer); video: clips, "
        "memory trained too (Meta's MOSE fine-tune; --data: DAVIS / YouTube-VOS / MOSE layout); "
        "auto: only the prompt-free instance head (autoseg.py), SAM 2 frozen",
    )
    g.add_argument(
        "--clicks", type=int, help="interactive, video: correction clicks per mask, 0-20"
    )
    g.add_argument("--frames", type=int, help="video: frames per clip")
    g.add_argument("--objects", type=int, help="video: objects per clip at most (random)")
    g.add_argument("--steps", type=int, help="total optimizer steps (--resume continues to it)")
    g.add_argument("--batch-size", type=int, help="images (video: clips) per step")
    g.add_argument("--max-masks", type=int, help="masks per image per step at most (random)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (video: Meta's 5e-6)")
    g.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        help="cosine: from --lr at step 0 to --lr / 10 at --steps (video's default, as Meta's)",
    )
    g.add_argument(
        "--accumulate",
        type=int,
        help="video: optimizer step every N x --batch-size clips, gradients accumulated (Meta: "
        "8 clips a step; under torchrun each process adds its own: N x batch x processes)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--out", help="folder for checkpoints, model.pt, best.pt, log.csv, curves.png")
    g.add_argument("--model", choices=list(MODELS), help="SAM 2 size")
    g.add_argument(
        "--checkpoint", help="base weights file, 'none' = random init; default: official weights"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (flags that change the training must match it)",
    )
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, help="seed of data order, clicks and init")
    g = p.add_argument_group("pixels and tiles (docs/data.md)")
    g.add_argument(
        "--normalize",
        help="how pixel values become 0-255: auto (8-bit as is; 16-bit/float: percentiles "
        "1-99.8 per image), percentile:LO,HI, range:MIN,MAX (fixed) or none",
    )
    g.add_argument(
        "--channels",
        help="which file channels become R,G,B, e.g. 1,0,0 or 2 (gray); default: gray repeated, "
        "2 channels -> R,G, RGB as is (5+ channels need it)",
    )
    g.add_argument(
        "--tile",
        type=int,
        help=f"train on N x N tiles of the full-resolution image ({MIN_TILE}-{MAX_TILE}; 0: "
        "no tiles, images resized whole to --max-side): small objects keep their pixels",
    )
    g.add_argument(
        "--tile-overlap",
        type=int,
        help="pixels shared by neighbouring tiles (default: an eighth of --tile)",
    )
    g = p.add_argument_group("LoRA on the image encoder (docs/lora.md)")
    g.add_argument(
        "--lora-rank",
        type=int,
        help="LoRA adapters of this rank on the last --lora-blocks trunk blocks (0: off); the "
        "cache holds the trunk's output before them, model.pt the merged weights",
    )
    g.add_argument(
        "--lora-blocks",
        type=int,
        help="adapt the last K trunk blocks (tiny/small: 2 = last stage, 9 = last two; up to all)",
    )
    g.add_argument("--lora-targets", help="comma list of the attention layers adapted: qkv, proj")
    g.add_argument("--lora-alpha", type=float, help="peft's lora_alpha (default: the rank)")
    g.add_argument("--lora-dropout", type=float, help="peft's lora_dropout")
    g = p.add_argument_group("prompt-free segmentation (docs/autoseg.md)")
    g.add_argument(
        "--auto-decoder",
        action="store_true",
        help="also train a small instance head on the cached features (foreground, centre and "
        "boundary distance maps + watershed): infer.py --auto then needs no clicks; saved in "
        "model.pt under 'auto_decoder'",
    )
    g.add_argument(
        "--amg-images",
        type=int,
        help="with --auto-decoder: validation images on which SAM 2's automatic mask generator "
        "(the base model's) is scored before training, for eval.json; 0: none. It decodes "
        "1024 clicks per image: minutes each on a CPU",
    )
    g = p.add_argument_group("advanced")
    g.add_argument(
        "--weight-decay",
        type=float,
        help="AdamW weight decay (video: 0.1, none on biases and LayerNorms, as Meta's)",
    )
    g.add_argument(
        "--clip-grad", type=float, help="clip the gradients' L2 norm at this (0: no clipping)"
    )
    g.add_argument(
        "--ignore-memory",
        action="store_true",
        help="video: start even when a step's memory estimate exceeds the free memory",
    )
    g.add_argument("--score-weight", type=float, help="article: weight of |score - IoU|")
    g.add_argument("--max-side", type=int, help="resize images so the longer side is this")
    g.add_argument("--min-area", type=int, help="drop instances under this many pixels (resized)")
    g.add_argument("--minutes", type=float, help="end training after this long (0: no limit)")
    g.add_argument("--save-every", type=int, help="write checkpoint.pt and model.pt every N steps")
    g.add_argument("--eval-every", type=int, help="val IoU every N steps (and first/last); 0: no")
    g.add_argument("--log-every", type=int, help="log.csv row and progress every N steps")
    g.add_argument(
        "--eval-clicks", type=int, help="click-curve evaluation before and after, at most N; 0: no"
    )
    g.add_argument("--workers", type=int, help="DataLoader processes decoding images")
    g.add_argument("--cache", choices=["auto", "gpu", "cpu", "off"], help="where features live")
    g.add_argument("--encode-batch", type=int, help="images per image-encoder call")
    g.add_argument(
        "--train-encoder", action="store_true", help="fine-tune the image encoder too (no cache)"
    )
    return p


def parse_args(argv: list[str] | None = None, description: str = "") -> Config:
    """Command line -> Config; the recipe's and --demo's defaults apply, flags given still win."""
    p = build_parser(description)
    first = p.parse_args(argv)
    recipe = RECIPES[first.recipe]
    p.set_defaults(**recipe.defaults)
    if first.demo:
        p.set_defaults(**(DEMO | recipe.demo))
    try:
        return Config(**vars(p.parse_args(argv)))
    except ValueError as e:
        p.error(str(e))
