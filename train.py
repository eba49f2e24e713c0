"""Fine-tune SAM 2's prompt encoder and mask decoder on your own images.

The method of "fine-tune SAM 2 in 60 lines": one random point per instance mask, the frozen image
encoder, BCE on the first multimask output plus 0.05 * |predicted score - IoU|, AdamW lr 1e-5,
wd 4e-5. Done properly: the frozen encoder runs once per image (its features are cached), many
images per step, each prompt against its own image's features, resumable atomic checkpoints,
validation IoU, any device, DistributedDataParallel under torchrun.

    python train.py --demo                                    # synthetic data, tiny model, CPU ok
    python train.py --data LabPicsV1 --model small --out runs/labpics
    python train.py --data LabPicsV1 --model small --out runs/labpics --resume   # after a stop
    torchrun --nproc_per_node=4 train.py --data LabPicsV1 --out runs/ddp

Outputs in --out: checkpoint.pt (resumable), model.pt and best.pt (SAM 2's own format: load with
build_sam2(config, "model.pt") or infer.py --checkpoint), log.csv and curves.png.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
from model import (
    MODELS,
    CheckpointError,
    Features,
    autocast,
    check_fits,
    encode_images,
    freeze_for_finetune,
    load_model,
    plain_warnings,
    predict_logits,
    resolve_checkpoint,
    resolve_device,
    upscale_logits,
)


@dataclass
class Config:
    data: str = ""  # dataset root (LabPics, instance-mask folder or COCO); see data.py
    out: str = "runs/sam2"  # folder for checkpoints and logs
    model: str = "small"  # a key of model.MODELS (the article uses small)
    checkpoint: str | None = None  # base weights; None = official (downloaded), "none" = random
    steps: int = 25000  # total optimizer steps (the article saw clear gains after ~25k)
    batch_size: int = 4  # images per step (the article: 1), each with all its masks
    max_masks: int = 32  # masks per image per step at most (random subset), bounds memory
    lr: float = 1e-5
    weight_decay: float = 4e-5
    score_weight: float = 0.05  # weight of |predicted score - IoU|
    save_every: int = 1000
    eval_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    workers: int = 2  # DataLoader processes decoding images
    max_side: int = 1024  # images resized so the longer side is this (as the article)
    min_area: int = 16  # instances smaller than this (pixels, after resize) are dropped
    cache: str = "auto"  # frozen-encoder features: auto | gpu | cpu | off
    encode_batch: int = 8  # images per encoder call while filling the cache
    train_encoder: bool = False  # also fine-tune the image encoder (slow, no cache)
    complex: bool = False  # LabPics: use Complex/ as well as Simple/
    resume: bool = False
    demo: bool = False


HELP = {
    "data": "dataset root: LabPics V1, images/+masks/ folders, or a COCO json (see README)",
    "out": "output folder (checkpoint.pt, model.pt, best.pt, log.csv, curves.png)",
    "model": f"SAM 2 size: {', '.join(MODELS)}",
    "checkpoint": "base weights file; default: official weights (downloaded if missing); "
    "'none' = random init",
    "steps": "total optimizer steps (a resumed run continues up to this)",
    "batch_size": "images per step",
    "max_masks": "at most this many masks per image per step (random subset)",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "score_weight": "weight of the |predicted score - IoU| loss",
    "save_every": "write checkpoint.pt and model.pt every N steps",
    "eval_every": "validation IoU every N steps (and at step 0 and the end); 0 = only those",
    "log_every": "log.csv row and progress update every N steps",
    "seed": "seed for data order, points and init",
    "device": "auto, cpu, cuda, cuda:1, mps",
    "workers": "DataLoader worker processes",
    "max_side": "resize images so the longer side is this many pixels",
    "min_area": "drop instances smaller than this many pixels after resizing",
    "cache": "where frozen-encoder features are kept: auto, gpu, cpu, off",
    "encode_batch": "images per image-encoder call",
    "train_encoder": "fine-tune the image encoder too (disables the feature cache)",
    "complex": "LabPics: add the Complex/ part",
    "resume": "continue from OUT/checkpoint.pt up to --steps",
    "demo": "make demo data if absent and run a short fine-tune of the tiny model",
}

# --demo: small enough to finish in a few minutes on a 2-core CPU
DEMO = {
    "data": "demo_data",
    "out": "runs/demo",
    "model": "tiny",
    "steps": 40,
    "batch_size": 2,
    "max_masks": 4,
    "eval_every": 20,
    "save_every": 20,
    "log_every": 5,
}


def parse_args(argv: list[str] | None = None) -> Config:
    """Command line -> Config (kebab-case flags; defaults mirror the article)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    given = set()

    class Mark(argparse.Action):  # remembers which flags were typed, so --demo fills the rest
        def __call__(self, parser, ns, values, option_string=None):
            given.add(self.dest)
            setattr(ns, self.dest, True if self.nargs == 0 else values)

    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action=Mark, nargs=0, default=f.default, help=HELP[f.name])
        else:
            typ = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(flag, action=Mark, type=typ, default=f.default, help=HELP[f.name])
    ns = vars(p.parse_args(argv))
    if ns["demo"]:
        ns.update({k: v for k, v in DEMO.items() if k not in given})
    cfg = Config(**ns)
    try:
        check_config(cfg)
    except ValueError as e:
        p.error(str(e))
    return cfg


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the flag and value for anything out of range."""
    for name in (
        "steps",
        "batch_size",
        "max_masks",
        "save_every",
        "log_every",
        "max_side",
        "encode_batch",
    ):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "workers", "min_area", "weight_decay", "score_weight"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.model not in MODELS:
        raise ValueError(f"--model {cfg.model!r} is not one of {', '.join(MODELS)}")
    if cfg.cache not in ("auto", "gpu", "cpu", "off"):
        raise ValueError(f"--cache must be auto, gpu, cpu or off, got {cfg.cache!r}")
    if not cfg.data:
        raise ValueError("--data is required (or use --demo)")


# ----------------------------------------------------------------------------- distributed


def setup_distributed(device_flag: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun: one process per GPU (NCCL) or CPU (gloo)."""
    if "RANK" not in os.environ:
        return 0, 1, resolve_device(device_flag)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = resolve_device(device_flag)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- data + cache


@dataclass
class Item:
    """One image ready for the decoder: features (1 image), its masks (N, H, W) bool, fixed
    points (N, 2) xy (used for validation) and its size (H, W)."""

    feats: Features
    masks: torch.Tensor
    points: torch.Tensor
    hw: tuple[int, int]


def loader(dataset, indices: list[int], cfg: Config, batch: int):
    """Batches of (index, Sample | None) in `indices` order, decoded in worker processes."""
    sub = torch.utils.data.Subset(dataset, indices)
    return zip(
        (indices[i : i + batch] for i in range(0, len(indices), batch)),
        torch.utils.data.DataLoader(
            sub,
            batch_size=batch,
            num_workers=cfg.workers,
            collate_fn=list,
            persistent_workers=False,
            pin_memory=False,
        ),
    )


def encode_samples(sam, samples: list[data.Sample], device, store, dtype) -> list[Item]:
    """Run the image encoder on `samples` and return Items whose tensors live on `store`."""
    feats = encode_images(sam, [s.image for s in samples])
    items = []
    for i, s in enumerate(samples):
        f = feats.index([i]).to(store, dtype=dtype)
        items.append(
            Item(
                f,
                torch.from_numpy(s.masks).to(store),
                torch.from_numpy(s.points).to(store),
                s.image.shape[:2],
            )
        )
    return items


def choose_cache(cfg: Config, device: torch.device, n_images: int, per_image: int) -> str:
    """Where features go: 'gpu', 'cpu' or 'off', by --cache and the memory there is."""
    if cfg.train_encoder:
        return "off"  # the encoder changes every step: cached features would be stale
    if cfg.cache != "auto":
        return "cpu" if (cfg.cache == "gpu" and device.type != "cuda") else cfg.cache
    need = n_images * per_image
    if device.type == "cuda" and need < 0.5 * torch.cuda.mem_get_info(device)[0]:
        return "gpu"
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need < 0.5 * avail:
        return "cpu"
    warnings.warn(
        f"feature cache would need {need / 2**30:.1f} GiB: running without it "
        "(every step runs the image encoder)"
    )
    return "off"


class ImageStore:
    """The images of one split (this rank's shard), as Items: cached after a first pass over
    the files (the encoder is frozen, so an image's features never change during a run), or
    read and encoded again each time when the cache is off."""

    def __init__(self, dataset, indices: list[int], cfg: Config, sam, device, rank: int):
        self.dataset, self.cfg, self.sam, self.device = dataset, cfg, sam, device
        self.dtype = torch.float32  # the dtype autocast computes in, half the memory on GPUs
        if device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.items: dict[int, Item] = {}
        self.mode: str | None = None  # decided once the first image's feature size is known
        self.valid: list[int] = []
        if cfg.train_encoder or cfg.cache == "off":
            self.mode = "off"  # the pass below then only finds the usable images
        for idxs, samples in self._batches(indices, rank):
            keep = [(i, s) for i, s in zip(idxs, samples) if s is not None and len(s.masks)]
            self.valid += [i for i, _ in keep]
            if not keep or self.mode == "off":
                continue
            with torch.no_grad(), autocast(device):
                items = encode_samples(sam, [s for _, s in keep], device, device, self.dtype)
            if self.mode is None:
                per_image = sum(
                    t.numel() * t.element_size()
                    for it in items
                    for t in [it.feats.image_embed, *it.feats.high_res, it.masks]
                ) / len(items)
                self.mode = choose_cache(cfg, device, len(indices), int(1.5 * per_image))
                if self.mode == "off":
                    continue
            store = device if self.mode == "gpu" else torch.device("cpu")
            for i, it in zip([i for i, _ in keep], items):
                it = Item(it.feats.to(store), it.masks.to(store), it.points.to(store), it.hw)
                if store.type == "cpu" and device.type == "cuda":  # pinned: async uploads
                    it = Item(
                        it.feats.pin_memory(), it.masks.pin_memory(), it.points.pin_memory(), it.hw
                    )
                self.items[i] = it
        self.mode = self.mode or "off"

    def _batches(self, indices, rank):
        from tqdm import tqdm

        bar = tqdm(
            total=len(indices),
            desc="reading + encoding",
            disable=rank != 0,
            file=sys.stderr,
            leave=False,
        )
        for idxs, samples in loader(self.dataset, indices, self.cfg, self.cfg.encode_batch):
            bar.update(len(idxs))
            yield idxs, samples
        bar.close()

    def get(self, indices: list[int], grad: bool = False) -> list[Item]:
        """Items for `indices` on the training device (encoded now if not cached)."""
        if self.mode != "off":
            return [self._to_device(self.items[i]) for i in indices]
        samples = [self.dataset[i] for i in indices]
        samples = [s for s in samples if s is not None and len(s.masks)]
        if not samples:
            return []
        with torch.set_grad_enabled(grad), autocast(self.device):
            return encode_samples(
                self.sam, samples, self.device, self.device, None if grad else self.dtype
            )

    def _to_device(self, it: Item) -> Item:
        d = self.device
        return Item(
            it.feats.to(d, non_blocking=True),
            it.masks.to(d, non_blocking=True),
            it.points.to(d, non_blocking=True),
            it.hw,
        )


def batch_indices(step: int, valid: list[int], batch_size: int, seed: int) -> list[int]:
    """The images of `step`: a deterministic function of (seed, step), so a resumed run draws
    the same batches as an uninterrupted one. Epochs are fresh permutations of `valid`."""
    n, out, perms = len(valid), [], {}
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(pos, n)
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed * 100003 + epoch)
            perms[epoch] = torch.randperm(n, generator=g).tolist()
        out.append(valid[perms[epoch][k]])
    return out


# ----------------------------------------------------------------------------- model + loss


class PromptDecoder(torch.nn.Module):
    """SAM 2's prompt encoder + mask decoder as one module, so DDP wraps exactly what trains."""

    def __init__(self, sam):
        super().__init__()
        self.sam = sam

    def forward(self, image_embed, high_res_0, high_res_1, img_idx, points, sizes):
        feats = Features(image_embed, [high_res_0, high_res_1])
        return predict_logits(self.sam, feats, img_idx, points, sizes)


def prompts(items: list[Item], max_masks: int, gen: torch.Generator):
    """One random point in each of up to `max_masks` random masks per image.

    Returns features of the batch, img_idx (M,), points (M, 2), sizes (B, 2) and the ground
    truth masks chosen per image (list of (N_i, H_i, W_i) bool)."""
    gts, pts, idx = [], [], []
    for b, it in enumerate(items):
        m = it.masks
        if len(m) > max_masks:
            m = m[torch.randperm(len(m), generator=gen, device=gen.device)[:max_masks]]
        gts.append(m)
        pts.append(data.sample_points(m, gen))
        idx.append(torch.full((len(m),), b, dtype=torch.long, device=m.device))
    feats = Features.cat([it.feats for it in items])
    sizes = torch.tensor([it.hw for it in items], device=feats.image_embed.device)
    return feats, torch.cat(idx), torch.cat(pts), sizes, gts


def compute_loss(
    low_res: torch.Tensor, scores: torch.Tensor, gts: list[torch.Tensor], score_weight: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """The article's loss, averaged over the images of a batch.

    low_res: (M, C, 256, 256) logits and scores (M, C) for the M prompts, grouped by image in
    the order of `gts`, a list of (N_i, H_i, W_i) bool masks (sum N_i = M). For each image: BCE
    between its first-output logits upscaled to (H_i, W_i) and the masks, plus score_weight *
    mean |score - IoU| (IoU of logits > 0 vs the mask, no grad). Returns (loss, iou (M,)).
    """
    losses, ious, start = [], [], 0
    for gt in gts:
        n = len(gt)
        logits = upscale_logits(low_res[start : start + n, :1], gt.shape[-2:])[:, 0]
        target = gt.to(logits.dtype)
        seg = F.binary_cross_entropy_with_logits(logits, target)
        with torch.no_grad():
            pred = logits > 0
            inter = (pred & gt).flatten(1).sum(1)
            union = (pred | gt).flatten(1).sum(1)
            iou = inter / union.clamp(min=1)
        score = (scores[start : start + n, 0].float() - iou).abs().mean()
        losses.append(seg + score_weight * score)
        ious.append(iou)
        start += n
    return torch.stack(losses).mean(), torch.cat(ious)


def train_step(
    decoder,
    sam,
    items: list[Item],
    opt,
    scaler,
    gen: torch.Generator,
    cfg: Config,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on `items`. Returns (loss, iou per mask), still on the device.
    A non-finite loss skips the update (the caller counts these)."""
    feats, img_idx, pts, sizes, gts = prompts(items, cfg.max_masks, gen)
    with autocast(device):
        low_res, scores = decoder(feats.image_embed, *feats.high_res, img_idx, pts, sizes)
    loss, iou = compute_loss(low_res, scores, gts, cfg.score_weight)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    # The one host sync per step, after backward so the GPU has queued work while we wait.
    finite = torch.isfinite(loss.detach()).int()
    if dist.is_initialized():  # ranks must agree, or one would step while another skips
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite:  # a NaN/inf must never reach the weights (or the optimizer state)
        opt.zero_grad(set_to_none=True)
        return torch.full_like(loss.detach(), float("nan")), iou
    scaler.step(opt)
    scaler.update()
    return loss.detach(), iou


@torch.no_grad()
def evaluate(sam, store: ImageStore, device, world: int, chunk: int = 64) -> float:
    """Mean IoU of the masks predicted from each val image's fixed, seeded points."""
    total, count = 0.0, 0
    for i in store.valid:
        (it,) = store.get([i])
        n = len(it.masks)
        for s in range(0, n, chunk):
            pts = it.points[s : s + chunk].float()
            with autocast(device):
                low_res, _ = predict_logits(
                    sam,
                    it.feats,
                    torch.zeros(len(pts), dtype=torch.long, device=device),
                    pts,
                    torch.tensor([it.hw], device=device),
                )
            pred = upscale_logits(low_res[:, :1], it.hw)[:, 0] > 0
            gt = it.masks[s : s + chunk]
            inter = (pred & gt).flatten(1).sum(1)
            union = (pred | gt).flatten(1).sum(1).clamp(min=1)
            total += (inter / union).sum().item()
            count += len(pts)
    total, count = all_sum([total, count], device, world)
    return total / count if count else float("nan")


# ----------------------------------------------------------------------------- checkpoints


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: a crash mid-write
    leaves the previous file intact."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    out: Path, sam, opt, scaler, step: int, cfg: Config, gen, extra: dict, best: bool = False
) -> None:
    """checkpoint.pt (resumable) and model.pt (SAM 2 format); best.pt too when `best`.
    `extra` (best/first val IoU, running means, seconds so far) goes into checkpoint.pt."""
    sd = {k: v.detach().cpu() for k, v in sam.state_dict().items()}
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"refusing to save non-finite weights at step {step}: {bad[:3]}")
    meta = {"model_name": cfg.model, "config": dataclasses.asdict(cfg), "step": step}
    save_atomic({"model": sd, **meta}, out / "model.pt")
    if best:
        save_atomic({"model": sd, **meta}, out / "best.pt")
    save_atomic(
        {
            "model": sd,
            **meta,
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "gen_state": gen.get_state(),
            **extra,
        },
        out / "checkpoint.pt",
    )


def load_checkpoint(path: Path, sam, opt, scaler, gen) -> dict:
    """Restore weights, optimizer, scaler and RNG from checkpoint.pt; return its contents.
    Raises CheckpointError naming the file if it cannot be read or does not fit."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        sd, opt_sd = ck["model"], ck["optimizer"]
    except Exception as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    check_fits(sam, sd, f"checkpoint {path} for model '{ck.get('model_name')}'")
    sam.load_state_dict(sd)
    try:
        opt.load_state_dict(opt_sd)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state in {path} does not fit this run: {e}") from None
    if ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    gen.set_state(ck["gen_state"].to(gen.get_state().device))
    return ck


# ----------------------------------------------------------------------------- logging

LOG_FIELDS = ["step", "loss", "train_iou", "val_iou", "lr", "seconds"]


def open_log(path: Path, resume_step: int):
    """log.csv, keeping the rows up to `resume_step` (later ones were never checkpointed)."""
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


# ----------------------------------------------------------------------------- main


def demo_checkpoint(cfg: Config) -> str | None:
    """--demo: the official weights if present or downloadable, else random init."""
    try:
        resolve_checkpoint(cfg.model, cfg.checkpoint)
        return cfg.checkpoint
    except CheckpointError as e:
        warnings.warn(
            f"{e}\n--demo goes on with RANDOM weights: the curves show the loop "
            "works, not what fine-tuning real SAM 2 weights gives."
        )
        return "none"


def train(cfg: Config) -> dict:
    """Run (or resume) a fine-tune as configured. Returns a summary dict (rank 0's view)."""
    from tqdm import tqdm

    rank, world, device = setup_distributed(cfg.device)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ck_path = out / "checkpoint.pt"
    if ck_path.exists() and not cfg.resume:
        raise SystemExit(
            f"{ck_path} exists: pass --resume to continue that run, or choose "
            "another --out (nothing was overwritten)"
        )
    if cfg.resume and ck_path.exists():
        try:
            saved = torch.load(ck_path, map_location="cpu", weights_only=True, mmap=True)
            saved = saved["config"]
        except Exception as e:  # torch raises many types for a corrupt or foreign file
            raise CheckpointError(f"cannot resume from {ck_path}: {e}") from None
        if saved["model"] != cfg.model:
            raise SystemExit(f"{ck_path} is a '{saved['model']}' run, not --model {cfg.model}")
    if cfg.demo:
        if rank == 0 and not Path(cfg.data).exists():
            data.make_demo(cfg.data)
        if cfg.checkpoint is None:
            cfg.checkpoint = demo_checkpoint(cfg)
        if world > 1:
            dist.barrier()

    torch.manual_seed(cfg.seed)  # same random init on every rank (and DDP broadcasts rank 0's)
    sam = load_model(cfg.model, cfg.checkpoint, device)
    params = freeze_for_finetune(sam, cfg.train_encoder)
    sam.train()
    if not cfg.train_encoder:
        sam.image_encoder.eval()
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )
    fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    gen = torch.Generator(device).manual_seed(cfg.seed + 1000 * rank)
    step, best_iou, first_iou = 0, -1.0, None
    run_loss, run_iou, secs_before = 0.0, 0.0, 0.0  # running means and time of earlier runs
    if cfg.resume and ck_path.exists():
        ck = load_checkpoint(ck_path, sam, opt, scaler, gen)
        step, best_iou, first_iou = ck["step"], ck["best_iou"], ck["first_iou"]
        # so a resumed run logs the same curve, and the same clock, as an uninterrupted one
        run_loss, run_iou = ck.get("run_loss", 0.0), ck.get("run_iou", 0.0)
        secs_before = ck.get("seconds", 0.0)
        if rank == 0:
            print(f"resuming {ck_path} at step {step} of {cfg.steps}", file=sys.stderr)
    elif cfg.resume and rank == 0:
        print(f"--resume: no {ck_path} yet, starting from step 0", file=sys.stderr)
    if step >= cfg.steps:
        if rank == 0:
            print(
                f"{ck_path} is already at step {step} (--steps {cfg.steps}): nothing to do. "
                f"val IoU at step 0: {first_iou:.4f} -> best {best_iou:.4f}",
                file=sys.stderr,
            )
        return {"step": step, "first_iou": first_iou, "best_iou": best_iou, "out": str(out)}
    decoder = PromptDecoder(sam)
    if world > 1:
        decoder = torch.nn.parallel.DistributedDataParallel(decoder, find_unused_parameters=True)

    train_set = data.load_split(
        cfg.data, "train", cfg.max_side, cfg.min_area, cfg.seed, cfg.complex
    )
    try:
        val_set = data.load_split(
            cfg.data, "test", cfg.max_side, cfg.min_area, cfg.seed, cfg.complex
        )
    except data.DataError as e:
        warnings.warn(f"no validation images ({e}): val IoU will not be measured")
        val_set = data.SegDataset([])
    shard = list(range(rank, len(train_set), world))
    train_store = ImageStore(train_set, shard, cfg, sam, device, rank)
    val_store = ImageStore(val_set, list(range(rank, len(val_set), world)), cfg, sam, device, rank)
    if not train_store.valid:
        raise SystemExit(
            f"no usable training images in {cfg.data} for rank {rank} "
            f"(of {world}): every image was unreadable or had no instances"
        )
    if rank == 0:
        print(
            f"{len(train_set)} train / {len(val_set)} val images; feature cache: "
            f"{train_store.mode}; device {device}, {world} process(es)",
            file=sys.stderr,
        )

    def run_eval():
        sam.eval()
        iou = evaluate(sam, val_store, device, world)
        sam.train()
        if not cfg.train_encoder:
            sam.image_encoder.eval()
        return iou

    log_f, log = open_log(out / "log.csv", step) if rank == 0 else (None, None)
    t0 = time.time()

    def run_state() -> dict:
        return {
            "best_iou": best_iou,
            "first_iou": first_iou,
            "run_loss": run_loss,
            "run_iou": run_iou,
            "seconds": secs_before + time.time() - t0,
        }

    if step == 0:
        first_iou = best_iou = run_eval()
        if rank == 0:  # the base model is the best so far: best.pt never is worse than it
            log.writerow({"step": 0, "val_iou": f"{first_iou:.4f}", "lr": cfg.lr, "seconds": 0.0})
            log_f.flush()
            save_checkpoint(out, sam, opt, scaler, 0, cfg, gen, run_state(), best=True)
    bar = tqdm(
        total=cfg.steps, initial=step, disable=rank != 0, file=sys.stderr, dynamic_ncols=True
    )
    bad_steps, masks_seen = 0, 0
    while step < cfg.steps:
        items = train_store.get(
            batch_indices(step, train_store.valid, cfg.batch_size, cfg.seed), grad=cfg.train_encoder
        )
        if not items:  # only if files changed since the first pass
            step += 1
            bar.update(1)
            continue
        loss, iou = train_step(decoder, sam, items, opt, scaler, gen, cfg, device)
        step += 1
        if not torch.isfinite(loss):
            bad_steps += 1
            warnings.warn(f"step {step}: non-finite loss, update skipped")
            if bad_steps >= 5:
                raise SystemExit(
                    f"{bad_steps} non-finite losses in a row at step {step}: "
                    "stopping (try a lower --lr); the last checkpoint is intact"
                )
            continue
        bad_steps = 0
        masks_seen += len(iou)
        k = 1 / min(step, 100)  # a plain mean over the first 100 steps, then the article's EMA
        run_loss += k * (loss.item() - run_loss)
        run_iou += k * (iou.mean().item() - run_iou)
        bar.update(1)
        do_eval = step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)
        val_iou = run_eval() if do_eval else None
        is_best = val_iou is not None and val_iou > best_iou
        if is_best:
            best_iou = val_iou
        if rank == 0 and (step % cfg.log_every == 0 or val_iou is not None):
            secs = time.time() - t0
            bar.set_postfix(
                loss=f"{run_loss:.4f}",
                iou=f"{run_iou:.3f}",
                masks_s=f"{masks_seen / max(secs, 1e-9):.0f}",
            )
            log.writerow(
                {
                    "step": step,
                    "loss": f"{run_loss:.5f}",
                    "train_iou": f"{run_iou:.4f}",
                    "val_iou": "" if val_iou is None else f"{val_iou:.4f}",
                    "lr": opt.param_groups[0]["lr"],
                    "seconds": f"{secs_before + secs:.1f}",
                }
            )
            log_f.flush()
        if rank == 0 and (step % cfg.save_every == 0 or step == cfg.steps or is_best):
            save_checkpoint(out, sam, opt, scaler, step, cfg, gen, run_state(), best=is_best)
    bar.close()
    if world > 1:
        check_replicas(sam, device)
    summary = {
        "step": step,
        "first_iou": first_iou,
        "best_iou": best_iou,
        "out": str(out),
        "model": sam,
    }
    if rank == 0:
        log_f.close()
        plot_curves(out / "log.csv", out / "curves.png")
        print(
            f"done: {step} steps. val IoU at step 0: {first_iou:.4f} -> best {best_iou:.4f}. "
            f"Files: {out / 'model.pt'} (final), {out / 'best.pt'} (best val), "
            f"{ck_path} (resume), {out / 'log.csv'}, {out / 'curves.png'}"
        )
    if world > 1:
        dist.destroy_process_group()
    return summary


def check_replicas(sam, device) -> None:
    """DDP keeps replicas identical; verify it (cheaply, by per-tensor sums) before finishing."""
    sums = torch.stack([p.detach().double().sum() for p in sam.parameters() if p.requires_grad])
    ref = sums.clone()
    dist.broadcast(ref, 0)
    if not torch.allclose(sums, ref, rtol=0, atol=1e-9):
        raise RuntimeError(f"rank {dist.get_rank()}: weights drifted from rank 0")
    if dist.get_rank() == 0:
        print("replicas identical across ranks", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    plain_warnings()
    try:
        train(cfg)
    except (CheckpointError, data.DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
