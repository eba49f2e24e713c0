"""Benchmark: the article's SAM 2 fine-tune and inference against ours, same data, same model.

In one process, on the same generated LabPics-style images and the same random-init SAM 2, this
times the article's method ("fine-tune SAM 2 in 60 lines", reimplemented below from its text) and
ours (train.py's cached-feature batched steps, infer.py's folder mode), and checks both compute
the same loss on one fixed batch, so the speed-up comes from doing the same math faster.

    python bench.py --quick                          # CPU ok: tiny model, 4 images, a few minutes
    python bench.py                                  # GPU: hiera-small, images 640-1440 px long
    python bench.py --model small --images 64 --steps 50 --json bench.json
    python bench.py --data /data/LabPicsV1           # your own LabPics V1 copy (Simple/Train)
    python bench.py --quick --lora                   # LoRA's cost only: frozen vs K blocks
    python -m pytest -q tests/test_bench.py

Figures: training masks/s through loss and optimizer step (article vs ours at steady state, and
ours over its first epoch, which includes reading files and filling the feature cache), peak
memory, inference seconds per image with files read and written, and the fixed-batch loss.

Memory of our two recipes, from one extra step each after the timed ones: its peak (CUDA:
max_memory_allocated; CPU: the process's peak RSS, Linux) and the memory per mask per pass,
(peak - memory in use before the step) / (masks x decoder passes), the figure to plan
--batch-size and --max-masks with (docs/speed.md#memory).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import torch

import data
import infer
import train
from model import (
    MODELS,
    amp_dtype,
    autocast,
    encode_images,
    load_model,
    predict_logits,
    resolve_device,
)
from plumbing.video import ClipCache, object_frame_bytes, sample_clips, video_step_bytes
from recipes import RECIPES, compute_loss, sample_batch

# Settings per preset; a flag given on the command line always wins.
FULL = {
    "model": "small",
    "images": 64,
    "sizes": "640-1440",
    "steps": 50,
    "warmup": 5,
    "batch_size": 8,
    "max_masks": train.Config.max_masks,
    "infer_images": 16,
    "points": 30,
    "workers": train.Config.workers,
    "video_frames": train.Config.frames,
}
QUICK = {
    "model": "tiny",
    "images": 4,
    "sizes": "demo",
    "steps": 2,
    "warmup": 1,
    "batch_size": 2,
    "max_masks": train.Config.max_masks,
    "infer_images": 2,
    "points": 30,
    "workers": 0,
    "video_frames": 2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument

    def opt(flag: str, typ, what: str) -> None:
        key = flag[2:].replace("-", "_")
        add(
            flag,
            type=typ,
            default=None,
            help=f"{what} (default {FULL[key]}; --quick: {QUICK[key]})",
        )

    add("--quick", action="store_true", help="small CPU preset: tiny model, 4 demo images")
    add("--data", help="LabPics V1 root to use (Simple/Train) instead of generated images")
    opt("--model", str, f"SAM 2 size, one of {', '.join(MODELS)}; random init")
    opt("--images", int, "training images (the first N of the data)")
    opt("--sizes", str, "generated images: 'demo' (240-640 px) or MIN-MAX longest side in px")
    opt("--steps", int, "timed steps: the article's (1 image each) and ours (steady state)")
    opt("--warmup", int, "untimed steps before timing (also 1 untimed image for inference)")
    opt("--batch-size", int, "our images per step (the article: 1)")
    opt("--max-masks", int, "our masks per image per step at most")
    opt("--infer-images", int, "images segmented by each inference method")
    opt("--points", int, "random points per image at inference")
    opt("--workers", int, "our DataLoader workers for the first pass over the files")
    opt("--video-frames", int, "frames per clip of the --recipe video timing")
    add("--video", action=argparse.BooleanOptionalAction, help="time --recipe video (--quick: off)")
    add(
        "--lora",
        action="store_true",
        help="only LoRA's cost (issue 27): a row per setting, frozen, LoRA on the last stage, "
        "the last two, all blocks, --train-encoder",
    )
    add("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default auto)")
    add("--seed", type=int, default=0, help="seed for data, weights, points (default 0)")
    add("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.video = not args.quick if args.video is None else args.video
    if args.model not in MODELS:
        p.error(f"--model {args.model!r} is not one of {', '.join(MODELS)}")
    for key in ("images", "steps", "batch_size", "max_masks", "infer_images", "points"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.workers < 0:
        p.error("--warmup and --workers must be >= 0")
    if args.sizes != "demo":
        try:
            lo, hi = (int(v) for v in args.sizes.split("-"))
            assert 0 < lo <= hi
        except (ValueError, AssertionError):
            p.error(f"--sizes must be 'demo' or MIN-MAX like 640-1440, got {args.sizes!r}")
    return args


# ----------------------------------------------------------------------------- data


def make_data(root: Path, n: int, sizes: str, seed: int) -> Path:
    """n demo images in LabPics layout under root; rescaled so the longest side is uniform in
    MIN-MAX unless sizes == 'demo'. Returns the LabPics root."""
    demo = data.make_demo(root / "demo", n_train=n, n_test=0, seed=seed)
    if sizes == "demo":
        return demo
    lo, hi = (int(v) for v in sizes.split("-"))
    out = root / "scaled"
    rng = np.random.default_rng(seed)
    for sub in ("Image", "Instance"):
        (out / "Simple" / "Train" / sub).mkdir(parents=True, exist_ok=True)
    for img_path in sorted((demo / "Simple" / "Train" / "Image").glob("*.jpg")):
        ann_path = demo / "Simple" / "Train" / "Instance" / (img_path.stem + ".png")
        img, ann = cv2.imread(str(img_path)), cv2.imread(str(ann_path))
        r = int(rng.integers(lo, hi + 1)) / max(img.shape[:2])
        wh = (round(img.shape[1] * r), round(img.shape[0] * r))
        cv2.imwrite(
            str(out / "Simple" / "Train" / "Image" / img_path.name),
            cv2.resize(img, wh, interpolation=cv2.INTER_LINEAR),
            [cv2.IMWRITE_JPEG_QUALITY, 90],
        )
        cv2.imwrite(
            str(out / "Simple" / "Train" / "Instance" / ann_path.name),
            cv2.resize(ann, wh, interpolation=cv2.INTER_NEAREST),
        )
    return out


def article_entries(root: Path, n: int) -> list[dict]:
    """The article's data list (first n by name): image and LabPics instance PNG paths."""
    folder = Path(root) / "Simple" / "Train"
    names = sorted(f for f in os.listdir(folder / "Image") if f.lower().endswith(".jpg"))[:n]
    return [
        {
            "image": str(folder / "Image" / f),
            "annotation": str(folder / "Instance" / (f[:-4] + ".png")),
        }
        for f in names
    ]


def make_infer_folder(entries: list[dict], dest: Path) -> tuple[Path, Path]:
    """Copy the images into dest/images and write dest/regions/<stem>.png (vessels and
    materials = inside, 255), the region masks both inference methods segment."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "regions").mkdir(parents=True, exist_ok=True)
    for e in entries:
        shutil.copy(e["image"], dest / "images")
        ann = cv2.imread(e["annotation"])
        region = ((ann[..., 0] > 0) | (ann[..., 2] > 0)).astype(np.uint8) * 255
        cv2.imwrite(str(dest / "regions" / (Path(e["image"]).stem + ".png")), region)
    return dest / "images", dest / "regions"


# ----------------------------------------------------------------------------- the article


def article_read_batch(entries: list[dict]):
    """The article's read_batch: one random image, resized so its longer side is 1024, its
    LabPics maps merged, one binary mask and one random point per instance."""
    ent = entries[np.random.randint(len(entries))]
    img = cv2.imread(ent["image"])[..., ::-1]
    ann_map = cv2.imread(ent["annotation"])
    r = np.min([1024 / img.shape[1], 1024 / img.shape[0]])
    img = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)))
    ann_map = cv2.resize(
        ann_map,
        (int(ann_map.shape[1] * r), int(ann_map.shape[0] * r)),
        interpolation=cv2.INTER_NEAREST,
    )
    mat_map = ann_map[:, :, 0]
    ves_map = ann_map[:, :, 2]
    # as the article, in uint8: vessel * (max + 1) wraps past 255 with many instances (the
    # demo data has few, so nothing merges here; data.labpics_merge does it in int32)
    mat_map[mat_map == 0] = ves_map[mat_map == 0] * (mat_map.max() + 1)
    points, masks = [], []
    for ind in np.unique(mat_map)[1:]:
        mask = (mat_map == ind).astype(np.uint8)
        masks.append(mask)
        coords = np.argwhere(mask > 0)
        yx = np.array(coords[np.random.randint(len(coords))])
        points.append([[yx[1], yx[0]]])
    return img, np.array(masks), np.array(points), np.ones([len(masks), 1])


def article_loss(predictor, image, mask, input_point, input_label, device: torch.device):
    """The article's forward pass and loss on one image -> (loss, iou per mask)."""
    predictor.set_image(image)
    mask_input, unnorm_coords, labels, unnorm_box = predictor._prep_prompts(
        input_point, input_label, box=None, mask_logits=None, normalize_coords=True
    )
    sparse_embeddings, dense_embeddings = predictor.model.sam_prompt_encoder(
        points=(unnorm_coords, labels), boxes=None, masks=None
    )
    high_res_features = [
        feat_level[-1].unsqueeze(0) for feat_level in predictor._features["high_res_feats"]
    ]
    low_res_masks, prd_scores, _, _ = predictor.model.sam_mask_decoder(
        image_embeddings=predictor._features["image_embed"][-1].unsqueeze(0),
        image_pe=predictor.model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse_embeddings,
        dense_prompt_embeddings=dense_embeddings,
        multimask_output=True,
        repeat_image=unnorm_coords.shape[0] > 1,
        high_res_features=high_res_features,
    )
    prd_masks = predictor._transforms.postprocess_masks(low_res_masks, predictor._orig_hw[-1])
    gt_mask = torch.tensor(mask.astype(np.float32)).to(device)
    prd_mask = torch.sigmoid(prd_masks[:, 0])
    seg_loss = (
        -gt_mask * torch.log(prd_mask + 0.00001)
        - (1 - gt_mask) * torch.log((1 - prd_mask) + 0.00001)
    ).mean()
    inter = (gt_mask * (prd_mask > 0.5)).sum(1).sum(1)
    iou = inter / (gt_mask.sum(1).sum(1) + (prd_mask > 0.5).sum(1).sum(1) - inter)
    score_loss = torch.abs(prd_scores[:, 0] - iou).mean()
    return seg_loss + score_loss * 0.05, iou


def article_amp(device: torch.device, dtype=torch.float16):
    """The article's mixed precision (torch.cuda.amp.autocast() = fp16 for training); none on
    CPU, where the article's script would not run at all."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def article_train_step(predictor, optimizer, scaler, entries, device: torch.device):
    """One step of the article's loop (one image, all its masks).
    Returns (masks used, mean IoU) like the article's running accuracy."""
    with article_amp(device):
        image, mask, input_point, input_label = article_read_batch(entries)
        if mask.shape[0] == 0:
            return 0, float("nan")
        loss, iou = article_loss(predictor, image, mask, input_point, input_label, device)
        predictor.model.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        # the article's running IoU: a host sync every step
        mean_iou = float(np.mean(iou.cpu().detach().numpy()))
    return len(mask), mean_iou


def article_infer_image(
    predictor, image_path: str, mask_path: str, out: Path, n_points: int, device: torch.device
) -> int:
    """The article's inference on one image, writing its two PNGs (instead of cv2.imshow).
    Returns the number of segments."""
    img = cv2.imread(image_path)[..., ::-1]
    mask = cv2.imread(mask_path, 0)
    r = np.min([1024 / img.shape[1], 1024 / img.shape[0]])
    image = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)))
    mask = cv2.resize(
        mask, (int(mask.shape[1] * r), int(mask.shape[0] * r)), interpolation=cv2.INTER_NEAREST
    )
    points = []
    for _ in range(n_points):  # np.argwhere for every point, as the article
        coords = np.argwhere(mask > 0)
        yx = np.array(coords[np.random.randint(len(coords))])
        points.append([[yx[1], yx[0]]])
    input_points = np.array(points)
    with torch.no_grad(), article_amp(device, torch.bfloat16):
        predictor.set_image(image)
        masks, scores, logits = predictor.predict(
            point_coords=input_points, point_labels=np.ones([input_points.shape[0], 1])
        )
    masks = masks[:, 0].astype(bool)
    sorted_masks = masks[np.argsort(scores[:, 0])][::-1].astype(bool)
    seg_map = np.zeros_like(sorted_masks[0], dtype=np.uint8)
    occupancy_mask = np.zeros_like(sorted_masks[0], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty masks: 0/0, as the article
        for i in range(sorted_masks.shape[0]):
            m = sorted_masks[i]
            if (m * occupancy_mask).sum() / m.sum() > 0.15:
                continue
            m[occupancy_mask] = 0
            seg_map[m] = i + 1
            occupancy_mask[m] = 1
    rgb_image = np.zeros((seg_map.shape[0], seg_map.shape[1], 3), dtype=np.uint8)
    for id_class in range(1, seg_map.max() + 1):
        rgb_image[seg_map == id_class] = [
            np.random.randint(255),
            np.random.randint(255),
            np.random.randint(255),
        ]
    stem = Path(image_path).stem
    cv2.imwrite(str(out / f"{stem}_annotation.png"), rgb_image)
    cv2.imwrite(str(out / f"{stem}_mix.png"), (rgb_image / 2 + image / 2).astype(np.uint8))
    return int(len(np.unique(seg_map)) - 1)


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> tuple[int, float]:
    """(what fn() returns, its seconds), the GPU's queued work included."""
    sync(device)
    t0 = time.perf_counter()
    n = fn()
    sync(device)
    return n, time.perf_counter() - t0


def fresh_model(args, device: torch.device):
    """The same random-init SAM 2 every call (seeded), so each method starts from equal weights."""
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(args.model, "none", device)


def new_phase(device: torch.device) -> None:
    """Free the previous phase's memory and restart the peak counter."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _status_bytes(key: str) -> int | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            line = next((x for x in f if x.startswith(key + ":")), None)
    except OSError:
        return None
    return None if line is None else int(line.split()[1]) * 1024


def memory_start(device: torch.device) -> int | None:
    """Restart the peak counter; return the bytes in use now (CUDA: allocated by torch; CPU:
    the process's RSS, after handing freed heap back to the system, so it counts live memory).
    None where the CPU's peak cannot be restarted (not Linux)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc keeps freed pages otherwise
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: VmHWM (peak RSS) := VmRSS
    except OSError:
        return None
    return _status_bytes("VmRSS")


def memory_now(device: torch.device) -> int | None:
    """Bytes in use now (CUDA: allocated by torch; CPU: the process's RSS)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return _status_bytes("VmRSS")


def memory_peak(device: torch.device) -> int | None:
    """Peak bytes since memory_start (CUDA: allocated by torch; CPU: process RSS)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _status_bytes("VmHWM")


def our_config(args, root: Path, device: torch.device, recipe: str = "article") -> train.Config:
    return train.Config(
        data=str(root),
        model=args.model,
        checkpoint="none",
        recipe=recipe,
        # the interactive recipe at the size its memory target names (--batch-size 4)
        batch_size=args.batch_size if recipe == "article" else min(args.batch_size, 4),
        max_masks=args.max_masks,
        workers=args.workers,
        seed=args.seed,
        device=str(device),
    )


# ----------------------------------------------------------------------------- stages


def fixed_batch_loss(args, entries: list[dict], device: torch.device) -> dict:
    """Both losses on the first image with fixed points and the same initial weights: fp32, and
    on CUDA also under each method's own autocast (article fp16 throughout; ours bf16 features
    and decoder, loss in fp32, as plumbing.cache.FeatureCache and train.train_step do)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    np.random.seed(args.seed)
    image, masks, points, labels = article_read_batch(entries[:1])
    sam = fresh_model(args, device)
    sam.sam_mask_decoder.train(True)
    sam.sam_prompt_encoder.train(True)
    predictor = SAM2ImagePredictor(sam)
    gts = [torch.from_numpy(masks.astype(bool)).to(device)]
    pts = torch.from_numpy(points[:, 0].astype(np.float32)).to(device)
    idx = torch.zeros(len(pts), dtype=torch.long, device=device)
    sizes = torch.tensor([image.shape[:2]], device=device)
    out = {"masks": len(masks)}
    for mode in ("fp32", "autocast") if device.type == "cuda" else ("fp32",):
        amp = mode == "autocast"
        with torch.no_grad():
            with article_amp(device) if amp else contextlib.nullcontext():
                theirs, _ = article_loss(predictor, image, masks, points, labels, device)
            with autocast(device) if amp else contextlib.nullcontext():
                feats = encode_images(sam, [image])
                if amp:
                    feats = feats.to(dtype=amp_dtype(device))
                low_res, scores = predict_logits(sam, feats, idx, pts, sizes)
            ours, _ = compute_loss(low_res, scores, gts, train.Config.score_weight)
        a, o = float(theirs), float(ours)
        out[mode] = {
            "article": a,
            "ours": o,
            "abs_diff": abs(a - o),
            "rel_diff": abs(a - o) / max(abs(a), 1e-12),
        }
    return out


def time_article_training(args, entries: list[dict], device: torch.device) -> dict:
    """The article's loop: warm-up steps, then --steps timed steps of one image each."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    new_phase(device)
    predictor = SAM2ImagePredictor(fresh_model(args, device))
    predictor.model.sam_mask_decoder.train(True)
    predictor.model.sam_prompt_encoder.train(True)
    optimizer = torch.optim.AdamW(params=predictor.model.parameters(), lr=1e-5, weight_decay=4e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    np.random.seed(args.seed)

    def run(steps: int) -> int:
        return sum(
            article_train_step(predictor, optimizer, scaler, entries, device)[0]
            for _ in range(steps)
        )

    run(args.warmup)
    n, secs = timed(device, lambda: run(args.steps))
    return {
        "masks_per_s": n / secs,
        "s_per_step": secs / args.steps,
        "masks_per_image": n / args.steps,
        "peak_gib": peak_gib(device),
    }


def our_step(cache, step: int, trainer, opt, scaler, gen, cfg, device) -> int:
    """One step of train.fit()'s loop (minus logging): its batch, train_step, and the two
    .item() reads fit() makes for its running averages. Returns the masks used."""
    ids = train.batch_indices(step, cache.ids, cfg.batch_size, cfg.seed)
    batch = sample_batch(cache.get(ids), cfg.max_masks, gen)
    loss, iou = train.train_step(trainer, batch, opt, scaler, cfg, gen, device)
    _ = loss.item(), iou.mean().item()
    return len(iou)


def time_our_training(
    args,
    root: Path,
    entries: list[dict],
    device: torch.device,
    recipe: str = "article",
    extra: dict | None = None,
) -> dict:
    """train.py's path: first epoch (files read, features encoded and cached, one epoch of
    steps) and steady state (--steps steps after --warmup more). extra: Config fields to
    change (LoRA's, --train-encoder)."""
    new_phase(device)
    cfg = dataclasses.replace(our_config(args, root, device, recipe), **(extra or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sam, opt, scaler, gen, _ = train.build(cfg, train.Context(0, 1, device, root), None)
    sam.train()
    sam.image_encoder.train(cfg.train_encoder or cfg.lora_rank > 0)
    trainer = train.Trainable(sam)
    rule = (cfg.normalize, cfg.channels)  # the run's pixel rule, as train.py reads images
    dataset = data.load_split(root, "train", cfg.max_side, cfg.min_area, cfg.seed, rule=rule)
    names = {Path(e["image"]).name for e in entries}  # the article's images, no others
    indices = [i for i, r in enumerate(dataset.records) if r.image.name in names]

    def run(first: int, n: int) -> int:
        return sum(
            our_step(cache, s, trainer, opt, scaler, gen, cfg, device)
            for s in range(first, first + n)
        )

    def first_epoch() -> int:
        nonlocal cache
        cache = train.feature_cache(dataset, indices, cfg, sam, device, progress=True)
        return run(0, math.ceil(len(cache.ids) / cfg.batch_size))

    cache = None
    n_first, first_secs = timed(device, first_epoch)
    epoch = math.ceil(len(cache.ids) / cfg.batch_size)
    run(epoch, args.warmup)
    n, secs = timed(device, lambda: run(epoch + args.warmup, args.steps))
    peak = peak_gib(device)
    last = epoch + args.warmup + args.steps
    memory = memory_step(cache, last, trainer, opt, scaler, gen, cfg, device)
    return {
        "masks_per_s": n / secs,
        "s_per_step": secs / args.steps,
        "masks_per_step": n / args.steps,
        "first_epoch_masks_per_s": n_first / first_secs,
        "first_epoch_s": first_secs,
        "cache": cache.mode,
        "cache_bytes_per_image": next(iter(cache.images.values())).feats.nbytes()
        if cache.images
        else 0,
        "batch_size": cfg.batch_size,
        "peak_gib": peak,
        **memory,
    }


def memory_step(cache, step: int, trainer, opt, scaler, gen, cfg, device) -> dict:
    """One more step of cfg.recipe (train.train_step's work), for its memory alone: in use
    before it, after its forward (what it keeps for backward) and at its peak, per mask per
    decoder pass."""
    ids = train.batch_indices(step, cache.ids, cfg.batch_size, cfg.seed)
    batch = sample_batch(cache.get(ids), cfg.max_masks, gen)
    recipe = RECIPES[cfg.recipe]
    opts = recipe.take(cfg)
    before = memory_start(device)
    with autocast(device):
        loss, iou = trainer(recipe.run, batch, opts, gen)
    after_forward = memory_now(device)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    top = memory_peak(device)
    passes = recipe.passes(opts)

    def per(x):
        return None if None in (x, before) else (x - before) / 2**20 / (len(iou) * passes)

    return {
        "passes": passes,
        "memory_step_masks": len(iou),
        "step_peak_gib": None if top is None else top / 2**30,
        "mib_per_mask_pass": per(top),
        "kept_mib_per_mask_pass": per(after_forward),
    }


def time_video_training(args, work: Path, device: torch.device) -> dict:
    """train.py's --recipe video at its defaults (1 clip a step, up to 3 objects, 7 correction
    clicks) on clips of --video-frames generated 480x854 frames: one step to fill the feature
    cache, then --steps timed steps. Also the bytes autograd keeps for backward in one step (its
    activation memory, on any device)."""
    new_phase(device)
    clips, frames = 1, args.video_frames
    root = data.make_video_demo(work / "videos", clips, 0, frames, (480, 854), args.seed)
    cfg = train.Config(data=str(root), model=args.model, checkpoint="none", recipe="video")
    cfg = dataclasses.replace(cfg, batch_size=clips, frames=frames, device=str(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sam, opt, scaler, gen, _ = train.build(cfg, train.Context(0, 1, device, root), None)
    sam.train()
    sam.image_encoder.eval()
    step_bytes = video_step_bytes(cfg, object_frame_bytes(device, sam.image_size))
    videos = data.load_videos(root, "train", (cfg.normalize, cfg.channels))
    cache = ClipCache(
        videos, list(range(clips)), sam, device, cache=cfg.cache, step_bytes=step_bytes
    )
    trainer, weights = (
        train.Trainable(sam),
        {p.untyped_storage().data_ptr() for p in sam.parameters()},
    )
    saved, objects = {}, []

    def run(first: int, n: int) -> int:
        for s in range(first, first + n):
            batch = sample_clips(cache, train.batch_indices(s, cache.ids, clips, 0), cfg, gen)
            objects.extend(len(c.gts[0]) for c in batch)
            train.train_step(trainer, batch, opt, scaler, cfg, gen, device)[0].item()
        return n

    def pack(t: torch.Tensor) -> torch.Tensor:
        if (ptr := t.untyped_storage().data_ptr()) not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(0, 1)
    n, secs = timed(device, lambda: run(1, args.steps))
    return {
        "frames_per_s": n * clips * frames / secs,
        "s_per_step": secs / n,
        "clips": clips,
        "frames": frames,
        "objects": sum(objects) / len(objects),
        "peak_gib": peak_gib(device),
        "saved_gib": sum(saved.values()) / 2**30,
    }


def time_article_inference(
    args, images: list[Path], regions: Path, out: Path, device: torch.device
) -> dict:
    """The article's inference, one image after another (one untimed image first if
    --warmup)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    new_phase(device)
    predictor = SAM2ImagePredictor(fresh_model(args, device))
    out.mkdir(parents=True, exist_ok=True)
    np.random.seed(args.seed)

    def one(p: Path) -> int:
        return article_infer_image(
            predictor, str(p), str(regions / (p.stem + ".png")), out, args.points, device
        )

    if args.warmup:
        one(images[0])
    sync(device)
    t0 = time.perf_counter()
    segments = sum(one(p) for p in images)
    sync(device)
    secs = time.perf_counter() - t0
    return {
        "s_per_image": secs / len(images),
        "segments_per_image": segments / len(images),
        "peak_gib": peak_gib(device),
    }


def time_our_inference(args, folder: Path, regions: Path, out: Path, device: torch.device) -> dict:
    """infer.py's folder mode, in-process: infer.main on the folder, with infer.load_model
    handing it the benchmark's model (so loading weights is not counted, as for the article)."""
    new_phase(device)
    sam = fresh_model(args, device)

    def run(src: Path, dest: Path) -> None:
        argv = [
            str(src),
            "--masks",
            str(regions),
            "--out",
            str(dest),
            "--model",
            args.model,
            "--checkpoint",
            "none",
            "--device",
            str(device),
            "--points",
            str(args.points),
            "--seed",
            str(args.seed),
        ]
        # its "wrote N files" line goes to stderr: stdout is the report
        with (
            mock.patch.object(infer, "load_model", lambda *a, **k: sam),
            contextlib.redirect_stdout(sys.stderr),
        ):
            if infer.main(argv) != 0:
                raise RuntimeError(f"infer.py {shlex.join(argv)} failed")

    if args.warmup:  # one image, alone in its own folder
        warm = out / "warmup_in"
        warm.mkdir(parents=True, exist_ok=True)
        shutil.copy(sorted(folder.iterdir())[0], warm)
        run(warm, out / "warmup_out")
    n = len(list(folder.iterdir()))
    sync(device)
    t0 = time.perf_counter()
    run(folder, out / "ours")
    sync(device)
    secs = time.perf_counter() - t0
    return {"s_per_image": secs / n, "peak_gib": peak_gib(device)}


# ----------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def report(r: dict) -> str:
    """The figures as a plain-text table."""
    tr, inf, loss = r["train"], r["infer"], r["loss"]
    it = tr["interactive"]

    def mem(v):
        return "n/a" if v is None else f"{v:.2f} GiB"

    def mib(v):
        return "n/a" if v is None else f"{v:.1f} MiB"

    ours = tr["ours"]
    peak_what = "(process RSS)" if ours["peak_gib"] is None else "(max_memory_allocated)"
    step_shape = [
        f"{x['batch_size']} / {x['memory_step_masks']} x {x['passes']}" for x in (ours, it)
    ]

    per_step_a = f"1 / {tr['article']['masks_per_image']:.1f}"
    per_step_o = f"{r['batch_size']} / {tr['ours']['masks_per_step']:.1f}"

    lines = [
        "SAM 2 fine-tune benchmark: the article's method vs ours",
        f"device    {r['device']}",
        f"model     {r['model']} (random init), {r['images']} images, "
        f"{tr['article']['masks_per_image']:.1f} masks/image, sizes {r['sizes']}",
        f"date      {r['date']}",
        f"command   {r['command']}",
        "",
        f"{'training (masks/s, loss + optimizer step)':46}{'article':>12}{'ours':>12}"
        f"{'ours/article':>14}",
        f"{'  steady state masks/s':46}{tr['article']['masks_per_s']:12.2f}"
        f"{tr['ours']['masks_per_s']:12.2f}{tr['ratio']:13.1f}x",
        f"{'  first epoch masks/s (files read, cache filled)':46}{'':>12}"
        f"{tr['ours']['first_epoch_masks_per_s']:12.2f}{tr['ratio_first_epoch']:13.1f}x",
        f"{'  s/step':46}{tr['article']['s_per_step']:12.4f}{tr['ours']['s_per_step']:12.4f}",
        f"{'  images / masks per step':46}{per_step_a:>12}{per_step_o:>12}",
        f"{'  peak GPU memory (max_memory_allocated)':46}{mem(tr['article']['peak_gib']):>12}"
        f"{mem(tr['ours']['peak_gib']):>12}",
        f"{'  ours, --recipe interactive: masks/s':46}{'':>12}"
        f"{it['masks_per_s']:12.2f}{it['masks_per_s'] / tr['article']['masks_per_s']:13.1f}x",
        f"{'    (batch {}, 1 + 7 passes) peak memory'.format(it['batch_size']):46}{'':>12}"
        f"{mem(it['peak_gib']):>12}",
    ]
    if "video" in tr:
        v = tr["video"]
        what = f"    ({v['clips']} x {v['frames']} frames, {v['objects']:.1f} objects) peak memory"
        lines += [
            f"{'  ours, --recipe video: frames/s':46}{'':>12}{v['frames_per_s']:12.2f}",
            f"{what:46}{'':>12}{mem(v['peak_gib']):>12}",
            f"{'    activations kept for backward':46}{'':>12}{mem(v['saved_gib']):>12}",
        ]
    lines += [
        "",
        f"{'memory of one step (ours)':46}{'article':>12}{'interactive':>12}",
        f"{'  images / masks x decoder passes':46}{step_shape[0]:>12}{step_shape[1]:>12}",
        f"{'  peak ' + peak_what:46}{mem(ours['step_peak_gib']):>12}{mem(it['step_peak_gib']):>12}",
        f"{'  per mask per pass (peak - before the step)':46}"
        + "".join(f"{mib(x['mib_per_mask_pass']):>12}" for x in (ours, it)),
        f"{'    of which kept by the forward for backward':46}"
        + "".join(f"{mib(x['kept_mib_per_mask_pass']):>12}" for x in (ours, it)),
        "",
        f"{'inference (folder, {} points, files r/w)'.format(r['points']):46}{'article':>12}"
        f"{'ours':>12}{'article/ours':>14}",
        f"{'  s/image':46}{inf['article']['s_per_image']:12.3f}"
        f"{inf['ours']['s_per_image']:12.3f}{inf['ratio']:13.1f}x",
        "",
        f"{'fixed batch loss (1 image, {} masks)'.format(loss['masks']):46}{'article':>12}"
        f"{'ours':>12}{'|diff|':>14}",
    ]
    for mode in ("fp32", "autocast"):
        if mode in loss:
            v = loss[mode]
            lines.append(
                f"{'  ' + mode:46}{v['article']:12.6f}{v['ours']:12.6f}{v['abs_diff']:14.2e}"
            )
    if r["max_rss_gib"] is not None:
        lines.append(f"\nprocess max RSS {r['max_rss_gib']:.2f} GiB (cpu: no GPU memory figures)")
    return "\n".join(lines)


def lora_settings(args) -> dict[str, dict]:
    """The LoRA table's rows: name -> Config fields (rank 8 on qkv, as micro-sam's default)."""
    trunk = fresh_model(args, torch.device("cpu")).image_encoder.trunk
    depth, ends = len(trunk.blocks), trunk.stage_ends
    rows = {"frozen (features cached)": {}}
    for what, k in [
        ("last stage", depth - 1 - ends[-2]),
        ("last two stages", depth - 1 - ends[-3]),
        ("all blocks", depth),
    ]:
        rows[f"LoRA, {what} (K={k})"] = dict(lora_rank=8, lora_blocks=k)
    rows["--train-encoder (no cache)"] = dict(train_encoder=True)
    return rows


def run_lora(args, root: Path, device: torch.device) -> dict:
    """LoRA's cost: train.py's article steps (time_our_training) for each lora_settings row."""
    entries = article_entries(root, args.images)
    rows = {}
    for name, extra in lora_settings(args).items():
        r = time_our_training(args, root, entries, device, extra=extra)
        rows[name] = {**r, "settings": extra}
    return {
        "device": device_name(device),
        "model": args.model,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "bench.py", *args.argv]),
        "images": len(entries),
        "steps": args.steps,
        "lora": rows,
    }


def lora_report(r: dict) -> str:
    """The LoRA table: masks/s at steady state, cache per image, one step's peak memory."""
    peak = "peak GiB (RSS)" if r["device"].startswith("cpu") else "peak GiB"
    frozen = next(iter(r["lora"].values()))["s_per_step"]
    lines = [
        "LoRA on the image encoder: cost per setting (--recipe article)",
        f"device    {r['device']}",
        f"model     {r['model']} (random init), {r['images']} images",
        f"date      {r['date']}",
        f"command   {r['command']}",
        "",
        f"{'setting':32}{'masks/s':>9}{'s/step':>9}{'x frozen':>10}{'cache/image':>13}{peak:>16}",
    ]
    for name, x in r["lora"].items():
        cache = f"{x['cache_bytes_per_image'] / 2**20:.1f} MiB" if x["cache"] != "off" else "-"
        top = "n/a" if x["step_peak_gib"] is None else f"{x['step_peak_gib']:.2f}"
        lines.append(
            f"{name:32}{x['masks_per_s']:9.2f}{x['s_per_step']:9.3f}"
            f"{x['s_per_step'] / frozen:9.1f}x{cache:>13}{top:>16}"
        )
    return "\n".join(lines)


def run_all(args, root: Path, work: Path, device: torch.device) -> dict:
    """All stages on the data at `root`; scratch files under `work`."""
    entries = article_entries(root, args.images)
    if not entries:
        raise SystemExit(f"no .jpg images in {root}/Simple/Train/Image")
    folder, regions = make_infer_folder(entries[: args.infer_images], work / "infer")
    loss = fixed_batch_loss(args, entries, device)
    article_train = time_article_training(args, entries, device)
    ours_train = time_our_training(args, root, entries, device)
    article_inf = time_article_inference(
        args, sorted(folder.iterdir()), regions, work / "article_out", device
    )
    ours_inf = time_our_inference(args, folder, regions, work / "ours_out", device)
    video = {"video": time_video_training(args, work, device)} if args.video else {}
    if device.type == "cpu" and RECIPES["interactive"].lean_cpu_heap:
        train.lean_cpu_heap()  # as train.py does for this recipe (it lasts: so, last)
    interactive = time_our_training(args, root, entries, device, "interactive")
    return {
        "device": device_name(device),
        "model": args.model,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "bench.py", *args.argv]),
        "images": len(entries),
        "sizes": args.data or args.sizes,
        "batch_size": args.batch_size,
        "points": args.points,
        "steps": args.steps,
        "warmup": args.warmup,
        "train": {
            "article": article_train,
            "ours": ours_train,
            "interactive": interactive,
            **video,
            "ratio": ours_train["masks_per_s"] / article_train["masks_per_s"],
            "ratio_first_epoch": ours_train["first_epoch_masks_per_s"]
            / article_train["masks_per_s"],
        },
        "infer": {
            "article": article_inf,
            "ours": ours_inf,
            "ratio": article_inf["s_per_image"] / ours_inf["s_per_image"],
        },
        "loss": loss,
        "max_rss_gib": None if device.type == "cuda" else max_rss_gib(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.argv = argv
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="sam2_bench_") as tmp:
        work = Path(tmp)
        root = (
            Path(args.data)
            if args.data
            else make_data(work / "data", args.images, args.sizes, args.seed)
        )
        if args.lora:
            results = run_lora(args, root, device)
        else:
            results = run_all(args, root, work, device)
    print(lora_report(results) if args.lora else report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
