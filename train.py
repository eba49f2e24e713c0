"""Fine-tune SAM 2's prompt encoder and mask decoder on your own images.

The recipe of "fine-tune SAM 2 in 60 lines": one random click per instance mask, the frozen image
encoder, BCE on the first multimask output plus 0.05 * |predicted score - IoU|, AdamW lr 1e-5,
wd 4e-5. Done properly: the frozen encoder runs once per image (its features are cached), many
images per step, each prompt against its own image's features, atomic checkpoints, a killed run
resumes, validation IoU, any device, DistributedDataParallel under torchrun.

    python train.py --demo                                    # synthetic data, tiny model, CPU ok
    python train.py --data LabPicsV1 --model small --out runs/labpics
    python train.py --data LabPicsV1 --model small --out runs/labpics --resume   # after a stop
    torchrun --nproc_per_node=4 train.py --data LabPicsV1 --out runs/ddp
    python train.py --recipe video --data DAVIS --out runs/davis   # SAM 2's memory, on clips
    python train.py --help                                    # every option (config.py), in groups

Outputs in --out: checkpoint.pt (resumable), model.pt and best.pt (SAM 2's own format: load with
build_sam2(config, "model.pt") or infer.py --checkpoint), log.csv, curves.png and eval.json
(click curves of the base model and best.pt).

In a notebook:

    from train import Config, train
    summary = train(Config(data="demo_data", model="tiny", checkpoint="none", steps=20))
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

import autoseg
import config
import data
from config import AT_MOST, DEMO, MAX_MASKS_PER_STEP, Config, build_parser  # noqa: F401
from evaluate import cached_curves, format_table, validation_iou
from model import (
    CheckpointError,
    amp_dtype,
    autocast,
    check_fits,  # noqa: F401 (train.X)
    cut_bytes,
    freeze_for_video,  # noqa: F401 (tests use train.X)
    load_lora_state,
    load_model,
    lora_first_block,
    plain_warnings,
    resolve_checkpoint,
)
from plumbing import checkpoints, video
from plumbing.cache import CachedImage, FeatureCache, free_bytes, share_images  # noqa: F401
from plumbing.checkpoints import (  # noqa: F401 (tests and notebooks use them as train.X)
    RESUME_IGNORES,
    RESUME_MAY_CHANGE,
    SaveError,
    claim_out,
    match_model_pt,
    read_checkpoint,
    resume_changes,
    save_atomic,
)
from plumbing.cli import add_data_flags, as_flag, flag  # noqa: F401
from plumbing.ddp import (
    agreed,
    check_replicas,
    gather_generators,
    setup_distributed,
)
from plumbing.lora import add_adapters, finish, lora_settings
from plumbing.runlog import LOG_FIELDS, open_log, plot_curves  # noqa: F401
from plumbing.stopping import Stopped, StopSignals, stop_message
from plumbing.video import (  # noqa: F401
    ClipCache,
    fitting_flags,
    object_frame_bytes,
    sample_clips,
    video_eval,
    video_step_bytes,
)
from recipes import (  # noqa: F401
    MAX_CLICKS,
    RECIPES,
    VIDEO,
    VIDEO_DEMO,
    Batch,
    mask_iou,
    sample_batch,
    video_param_groups,
)


def parse_args(argv: list[str] | None = None) -> Config:
    """Command line -> Config (config.parse_args with this script's description)."""
    return config.parse_args(argv, __doc__.split("\n\n")[0])


# ----------------------------------------------------------------------------- set-up


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device
    out: Path
    stops: StopSignals = dataclasses.field(default_factory=lambda: StopSignals())
    head: autoseg.InstanceHead | None = None  # --auto-decoder: the prompt-free instance head
    amg_images: int = 0  # validation images SAM 2's generator scores before training


def lean_cpu_heap() -> None:
    """Interactive recipe on the CPU (glibc): map tensors of 8 MiB and up from the system and
    give them back when freed. By default glibc raises that limit to 32 MiB as such tensors
    are freed and keeps them in its heap, which the recipe's passes and recomputations
    fragment: a demo run (docs/speed.md#memory) peaked at 6.5 GiB of RSS, 4.1 GiB with this, for
    more page faults (about 20% more CPU time)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(-3, 8 << 20)  # -3: M_MMAP_THRESHOLD


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


@dataclass
class State:
    """What a resumed run needs besides weights and optimizer: where it was, what it logged."""

    step: int = 0
    first_iou: float = float("nan")  # val IoU of the base model
    best_iou: float = -1.0
    run_loss: float = 0.0  # running means shown in the log
    run_iou: float = 0.0
    seconds: float = 0.0
    first_eval: dict | None = None  # the base model's click-curve metrics


def build(cfg: Config, ctx: Context, ck: dict | None):
    """Model, optimizer, scaler, this rank's generator and State, restored from `ck` if any."""
    torch.manual_seed(cfg.seed)  # same random init on every rank (and DDP broadcasts rank 0's)
    with warnings.catch_warnings():
        if ck is not None:  # resuming: checkpoint.pt's weights replace random ones at once
            warnings.filterwarnings("ignore", "SAM 2 .* RANDOM weights")
        sam = load_model(cfg.model, "none" if ck is not None else cfg.checkpoint, ctx.device)
    params, decays = RECIPES[cfg.recipe].params(sam, cfg.weight_decay, cfg.train_encoder)
    params = add_adapters(sam, params, lora_settings(dataclasses.asdict(cfg)))  # after the freeze
    if cfg.auto_decoder:  # the head: its own optimizer group, after SAM 2's
        ctx.head, params, decays = autoseg.add_head(params, decays, cfg.lr, cfg.weight_decay)
        ctx.head.to(ctx.device)
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=ctx.device.type == "cuda"
    )
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype(ctx.device) == torch.float16)
    gen = torch.Generator(ctx.device).manual_seed(cfg.seed + 1000 * ctx.rank)
    state = State()
    if ck is not None:
        path = ctx.out / "checkpoint.pt"  # with LoRA: base weights and adapters, unmerged
        load_lora_state(
            sam, ck["model"], ck.get("adapters", {}), f"checkpoint {path} for model '{cfg.model}'"
        )
        if ctx.head is not None:
            ctx.head.load_state_dict(ck[autoseg.STATE_KEY]["weights"])
        try:
            opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in {path} does not fit this run: {e}") from None
        for group, decay in zip(opt.param_groups, decays):  # the command line wins over the
            group.update(lr=cfg.lr * group.get("lr_scale", 1), weight_decay=decay)  # saved state
        scaler.load_state_dict(ck["scaler"])
        gens = ck["gen_states"]
        if len(gens) == ctx.world:  # each rank's own clicks go on where they stopped
            gen.set_state(gens[ctx.rank])
        elif ctx.rank == 0:
            warnings.warn(f"{path} was written by {len(gens)} process(es): clicks reseeded")
        state = State(**ck["state"])
        if ctx.rank == 0:
            print(f"resuming {path} at step {state.step} of {cfg.steps}", file=sys.stderr)
    return sam, opt, scaler, gen, state


def lr_at(cfg: Config, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): --lr, or with --lr-schedule
    cosine Meta's CosineParamScheduler from --lr at step 0 towards --lr / 10 at --steps."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    end = cfg.lr / 10
    return end + 0.5 * (cfg.lr - end) * (1 + math.cos(math.pi * step / cfg.steps))


def batch_indices(step: int, ids: list[int], batch_size: int, seed: int) -> list[int]:
    """The images of `step`: a deterministic function of (seed, step), so a resumed run draws
    the same batches as an uninterrupted one. Epochs are fresh permutations of `ids`."""
    n, out, perms = len(ids), [], {}
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(pos, n)
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed * 100003 + epoch)
            perms[epoch] = torch.randperm(n, generator=g).tolist()
        out.append(ids[perms[epoch][k]])
    return out


# ----------------------------------------------------------------------------- steps


class Trainable(torch.nn.Module):
    """SAM 2 behind one forward that runs a recipe, so DDP wraps exactly one call per step;
    with --auto-decoder the instance head's loss on the step's features joins the recipe's
    (a recipe without a loss of its own, --recipe auto: the head's IoU is logged)."""

    def __init__(self, sam, head: autoseg.InstanceHead | None = None):
        super().__init__()
        self.sam, self.head = sam, head

    def forward(self, run, batch, opts, gen: torch.Generator):
        if self.head is not None:  # LoRA's adapted blocks run once for the recipe and the head
            batch = dataclasses.replace(batch, feats=finish(self.sam, batch.feats))
        loss, iou = run(self.sam, batch, opts, gen)
        if self.head is None:
            return loss, iou
        extra, head_iou = autoseg.batch_loss(self.head, batch.feats, batch.targets)
        return (extra if loss is None else loss + extra), (head_iou if iou is None else iou)


def train_step(trainer, batch: Batch, opt, scaler, cfg: Config, gen, device: torch.device):
    """One optimizer step of cfg.recipe. Returns (loss, IoU per mask) on the device; loss is
    None when the loss or the gradients were not finite, and the update was skipped."""
    recipe = RECIPES[cfg.recipe]
    with autocast(device):
        loss, iou = trainer(recipe.run, batch, recipe.take(cfg), gen)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return finish_step(loss, opt, scaler, cfg), iou


def video_step(trainer, parts: list[list[int]], cache, opt, scaler, cfg: Config, gen, ctx):
    """One optimizer step of the video recipe on len(parts) micro-batches (video ids, a clip
    each), gradients accumulated (--accumulate) and DDP's all-reduce only after the last. As
    Meta's loss, the step's gradient is that of the mean loss over every object of every clip
    of every process. Returns (loss, IoU per object) as train_step."""
    opt.zero_grad(set_to_none=True)
    total, ious, recipe = 0.0, [], RECIPES[cfg.recipe]
    for k, ids in enumerate(parts):
        last = k == len(parts) - 1
        with contextlib.nullcontext() if ctx.world == 1 or last else trainer.no_sync():
            clips = sample_clips(cache, ids, cfg, gen)
            with autocast(ctx.device):
                loss, iou = trainer(recipe.run, clips, recipe.take(cfg), gen)
            summed = loss * len(iou)  # the recipe's mean over these clips' objects -> sum
            scaler.scale(summed).backward()
        total, ious = total + summed.detach(), [*ious, iou]
    iou = torch.cat(ious)
    n = torch.tensor(float(len(iou)), device=ctx.device)
    if ctx.world > 1:  # DDP averages over processes: divide by the mean objects per process
        dist.all_reduce(n)
        n /= ctx.world
    for g in opt.param_groups:
        for p in g["params"]:
            if p.grad is not None:
                p.grad.div_(n)
    return finish_step(total / len(iou), opt, scaler, cfg), iou


def finish_step(loss: torch.Tensor, opt, scaler, cfg: Config) -> torch.Tensor | None:
    """After backward: clip the gradients' L2 norm at cfg.clip_grad (if set; Meta's
    GradientClipper, after unscaling) and step, unless the loss or the gradients are not
    finite. Returns the loss (detached), or None when the update was skipped."""
    finite = torch.isfinite(loss.detach())
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if cfg.clip_grad:
        if scaler.is_enabled():
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(
            [p for g in opt.param_groups for p in g["params"]], cfg.clip_grad, norm_type=2.0
        )
        if not scaler.is_enabled():
            finite &= torch.isfinite(norm)
    elif not scaler.is_enabled():  # under fp16 the GradScaler skips non-finite gradients itself
        finite &= torch.isfinite(torch.nn.utils.get_total_norm(grads))
    if dist.is_initialized():  # ranks must agree, or one would step while another skips
        finite = finite.int()
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite:  # the one host sync per step; a NaN/inf never reaches the weights
        opt.zero_grad(set_to_none=True)
        return None
    scaler.step(opt)
    scaler.update()
    return loss.detach()


# ----------------------------------------------------------------------------- validation


def click_eval(sam, cache: FeatureCache, ctx: Context, max_clicks: int, head=None) -> dict:
    """evaluate.cached_curves for this run: with --auto-decoder, the head's (`head`, best.pt's)
    or, for the base model, SAM 2's generator on --amg-images images."""
    amg = ctx.amg_images if ctx.head is not None else 0
    return cached_curves(sam, cache, ctx.device, ctx.world, max_clicks, ctx.rank == 0, head, amg)


def clip_curves(sam, cache: ClipCache, ctx: Context, max_clicks: int, head=None) -> dict:
    """J&F of the first-frame mask and click protocols on `cache` (means over every rank's)."""
    return video_eval(sam, cache, ctx.device, ctx.world, ("mask", "click"), ctx.rank == 0)


# ----------------------------------------------------------------------------- images or clips


def load_images(cfg: Config, split: str) -> data.SegDataset:
    """The `split` of cfg.data's images, as the data flags say."""
    kw = dict(crowd=cfg.crowd_instances, ignore_index=cfg.ignore_index, stuff=cfg.stuff_instances)
    kw |= dict(rule=(cfg.normalize, cfg.channels), tile=cfg.tile, tile_overlap=cfg.tile_overlap)
    return data.load_split(cfg.data, split, cfg.max_side, cfg.min_area, cfg.seed, cfg.complex, **kw)


def feature_cache(dataset, indices, cfg: Config, sam, device, progress=False, like=None):
    """A plumbing.cache.FeatureCache of `indices` with the run's cache flags (`like`: unused,
    each image split has its own budget)."""
    return FeatureCache(
        dataset,
        indices,
        sam,
        device,
        progress,
        encode_batch=cfg.encode_batch,
        workers=cfg.workers,
        cache=cfg.cache,
        train_encoder=cfg.train_encoder,
        lora_from=lora_first_block(sam),
        targets=autoseg.targets_for(sam) if cfg.auto_decoder else None,
    )


def clip_cache(videos, indices, cfg: Config, sam, device, progress=False, like=None):
    """A plumbing.video.ClipCache of `indices`, leaving room for a step's activations; `like`:
    the run's other ClipCache, whose memory budget it shares (each would take half the RAM)."""
    step = video_step_bytes(cfg, object_frame_bytes(device, sam.image_size))
    first = lora_first_block(sam)
    cache = ClipCache(
        videos, indices, sam, device, progress, cache=cfg.cache, step_bytes=step, lora_from=first
    )
    if like is not None:
        cache.room = like.room
    return cache


def image_step(trainer, ids: list[int], cache, opt, scaler, cfg: Config, gen, ctx: Context):
    """train_step on the images `ids` (sample_batch draws their masks and clicks)."""
    batch = sample_batch(cache.get(ids), cfg.max_masks, gen)
    return train_step(trainer, batch, opt, scaler, cfg, gen, ctx.device)


def clip_step(trainer, ids: list[int], cache, opt, scaler, cfg: Config, gen, ctx: Context):
    """video_step on the videos `ids`: --accumulate micro-batches of --batch-size clips."""
    parts = [ids[k : k + cfg.batch_size] for k in range(0, len(ids), cfg.batch_size)]
    return video_step(trainer, parts, cache, opt, scaler, cfg, gen, ctx)


def check_video_memory(cfg: Config, ctx: Context, image_size: int) -> None:
    """plumbing.video.check_video_memory for this run: refuse a step that would not fit."""
    video.check_video_memory(cfg, ctx.device, ctx.world, image_size)


@dataclass(frozen=True)
class Kind:
    """What differs between recipes that take images and those that take clips (Recipe.data):
    load(cfg, split) -> dataset; cache(dataset, indices, cfg, sam, device, progress, like) ->
    its cache; step(trainer, ids, cache, opt, scaler, cfg, gen, ctx) -> (loss, IoU); score(sam,
    cache, ctx, Recipe.scores) -> validation's number; curves(sam, cache, ctx, max_clicks) ->
    eval.json's metrics; check(cfg, ctx, image_size): refuse before step 1; demo(folder)."""

    load: Callable
    cache: Callable
    step: Callable
    score: Callable
    curves: Callable
    check: Callable
    demo: Callable
    noun: str


KINDS = {
    "images": Kind(
        load_images,
        feature_cache,
        image_step,
        lambda sam, cache, ctx, scores: (
            autoseg.cached_scores(cache, ctx.device, ctx.world, head=ctx.head, sam=sam)["head_msa"]
            if scores == "head"  # --recipe auto: the instance head's mSA
            else validation_iou(sam, cache, ctx.device, ctx.world, scores)
        ),
        click_eval,
        lambda cfg, ctx, image_size: None,
        data.make_demo,
        "images",
    ),
    "clips": Kind(
        lambda cfg, split: data.load_videos(cfg.data, split, (cfg.normalize, cfg.channels)),
        clip_cache,
        clip_step,
        lambda sam, cache, ctx, scores: video_eval(sam, cache, ctx.device, ctx.world)["jf_mask"],
        clip_curves,
        check_video_memory,
        data.make_video_demo,
        "videos",
    ),
}


def kind_of(cfg: Config) -> Kind:
    return KINDS[RECIPES[cfg.recipe].data]


def open_data(cfg: Config):
    """The train split and the validation split (empty, with a warning, if there is none)."""
    load = kind_of(cfg).load
    train_set = load(cfg, "train")
    try:
        val_set = load(cfg, "test")
    except data.DataError as e:
        warnings.warn(f"no validation images ({e}): val IoU will not be measured")
        val_set = data.SegDataset([])
    return train_set, val_set


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    out: Path, sam, opt, scaler, cfg: Config, state: State, gens: list, best=False, head=None
) -> None:
    """plumbing.checkpoints.save_checkpoint of this run's Config and State (see there); the
    instance head, if any, under autoseg.STATE_KEY beside "model"."""
    extra = None if head is None else {autoseg.STATE_KEY: autoseg.head_state(head)}
    config, state = dataclasses.asdict(cfg), dataclasses.asdict(state)
    checkpoints.save_checkpoint(out, sam, opt, scaler, config, state, gens, best, extra)


# ----------------------------------------------------------------------------- the run


def fit(cfg, ctx, sam, trainer, opt, scaler, gen, state, train_cache, val_cache) -> None:
    """The training loop: batch -> forward -> loss -> step -> log / evaluate / save."""
    from tqdm import tqdm

    rank0, stops = ctx.rank == 0, ctx.stops
    log_f, log = open_log(ctx.out / "log.csv", state.step) if rank0 else (None, None)
    t0, secs_before, bad, masks_seen = time.time(), state.seconds, 0, 0
    saved = state.step if state.step else -1  # the step checkpoint.pt holds

    def save(best: bool) -> None:
        nonlocal saved
        state.seconds = secs_before + time.time() - t0
        gens = gather_generators(gen, ctx.world)
        if rank0:
            save_checkpoint(ctx.out, sam, opt, scaler, cfg, state, gens, best, ctx.head)
        saved = state.step

    def log_row(**row) -> None:
        log.writerow({"step": state.step, "lr": opt.param_groups[0]["lr"], **row})
        log_f.flush()

    kind, scores = kind_of(cfg), RECIPES[cfg.recipe].scores
    if state.step == 0:  # the base model is the best so far: best.pt is never worse than it
        state.first_iou = state.best_iou = kind.score(sam, val_cache, ctx, scores)
        if cfg.eval_clicks:
            state.first_eval = kind.curves(sam, val_cache, ctx, cfg.eval_clicks)
        if rank0:
            log_row(val_iou=f"{state.first_iou:.4f}", seconds=0.0)
    stops.deferred = True  # from here a signal ends the step, saves it and stops
    if saved < 0:
        save(best=True)
    bar = tqdm(total=cfg.steps, initial=state.step, disable=not rank0, dynamic_ncols=True)
    last, t_train = cfg.steps, time.time()  # --minutes counts training, not the base model's eval
    try:
        while True:
            if signum := agreed(stops.signum, ctx.world, ctx.device):  # all ranks, same step
                if saved != state.step:
                    save(best=False)
                stops.raised = True  # saved: a later signal need not cut the way out short
                break
            if state.step >= last:
                break
            if cfg.lr_schedule != "constant":
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, state.step) * group.get("lr_scale", 1)
            n = cfg.batch_size * cfg.accumulate  # --accumulate > 1: clips only (Recipe.accumulate)
            ids = batch_indices(state.step, train_cache.ids, n, cfg.seed)
            loss, iou = kind.step(trainer, ids, train_cache, opt, scaler, cfg, gen, ctx)
            state.step += 1
            bar.update(1)
            late = time.time() - t_train > 60 * cfg.minutes
            if cfg.minutes and agreed(late, ctx.world, ctx.device):
                last = state.step
            if loss is None:
                bad += 1
                warnings.warn(f"step {state.step}: non-finite loss or gradients, update skipped")
                if bad >= 5:
                    raise SystemExit(
                        f"error: {bad} non-finite steps in a row at step {state.step}: stopping "
                        "(try a lower --lr); the last checkpoint is intact"
                    )
                continue
            bad, masks_seen = 0, masks_seen + len(iou)
            k = 1 / min(state.step, 100)  # a plain mean over the first 100 steps, then an EMA
            state.run_loss += k * (loss.item() - state.run_loss)
            state.run_iou += k * (iou.mean().item() - state.run_iou)
            val = None
            if state.step == last or (cfg.eval_every and state.step % cfg.eval_every == 0):
                val = kind.score(sam, val_cache, ctx, scores)
            best = val is not None and val > state.best_iou
            state.best_iou = val if best else state.best_iou
            if rank0 and (state.step % cfg.log_every == 0 or val is not None):
                secs = time.time() - t0
                rate = f"{masks_seen / max(time.time() - t_train, 1e-9):.1f}"
                bar.set_postfix(
                    loss=f"{state.run_loss:.4f}", iou=f"{state.run_iou:.3f}", masks_s=rate
                )
                log_row(
                    loss=f"{state.run_loss:.5f}",
                    train_iou=f"{state.run_iou:.4f}",
                    val_iou="" if val is None else f"{val:.4f}",
                    seconds=f"{secs_before + secs:.1f}",
                )
            if state.step % cfg.save_every == 0 or state.step == last or best:
                save(best)
    finally:  # also when stopped at once: the progress bar ends its line before the message
        stops.deferred = False
        bar.close()
        if rank0:
            log_f.close()
    if signum:
        raise Stopped(signum)


def report_best(cfg: Config, ctx: Context, sam, val_cache: FeatureCache, before: dict) -> None:
    """Click curves of best.pt next to the base model's; also written to OUT/eval.json."""
    if ctx.world > 1:
        dist.barrier()  # rank 0 has written best.pt
    saved = torch.load(ctx.out / "best.pt", weights_only=True)
    if lora_first_block(sam) is None:
        best = copy.deepcopy(sam)
    else:  # best.pt holds the merged weights, SAM 2's own: a model without adapters takes them
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "SAM 2 .* RANDOM weights")
            best = load_model(cfg.model, "none", ctx.device)
    best.load_state_dict(saved["model"])
    head = saved.get(autoseg.STATE_KEY)
    head = head and autoseg.load_head(head, ctx.device)
    after = kind_of(cfg).curves(best, val_cache, ctx, cfg.eval_clicks, head)
    if ctx.rank == 0:
        print(f"validation, base model -> best.pt:\n{format_table(after, before)}")
        text = json.dumps({"base": before, "best": after}, indent=2)
        (ctx.out / "eval.json").write_text(text + "\n")


def no_score_reason(cfg: Config, val_set) -> str:
    """Why validation gave no score (evaluate() returned nan), for the run's last line."""
    if not len(val_set):
        return "there is no validation split (see the warning above)"
    return RECIPES[cfg.recipe].no_score.format(n=len(val_set))


def train(cfg: Config) -> dict:
    """Run (or resume) a fine-tune as configured. Returns a summary (rank 0's view): step,
    first_iou, best_iou, out and the trained model. On SIGINT or SIGTERM it saves the step it
    is on and raises Stopped, whose text says so (see StopSignals)."""
    with StopSignals() as stops:
        try:
            return run_training(cfg, stops)
        except Stopped as e:
            step = stops.state and stops.state.step
            text = stop_message(e, cfg.out, cfg.steps, step) if stops.rank == 0 else ""
            raise Stopped(e.signum, text, e.at_once) from None


def run_training(cfg: Config, stops: StopSignals) -> dict:
    """train() without the signal handling."""
    rank, world, device = setup_distributed(cfg.device)
    recipe = RECIPES[cfg.recipe]
    kind = KINDS[recipe.data]
    if device.type == "cpu" and recipe.lean_cpu_heap:
        lean_cpu_heap()
    ctx = Context(rank, world, device, Path(cfg.out), stops, amg_images=cfg.amg_images)
    stops.rank = rank
    if cfg.demo and rank == 0 and not Path(cfg.data).exists():
        kind.demo(cfg.data)
    if cfg.demo and cfg.checkpoint is None:
        cfg.checkpoint = demo_checkpoint(cfg)
    train_set, val_set = open_data(cfg)  # before --out exists: a bad dataset leaves nothing
    notes = [n for d in (train_set, val_set) for n in getattr(d, "notes", [])]  # videos: none
    for note in notes if rank == 0 else []:
        print(note, file=sys.stderr)  # e.g. "train: 18 crowd (iscrowd=1) annotations skipped ..."
    fresh = not ctx.out.exists()
    lock = claim_out(ctx.out, cfg.resume) if rank == 0 else None
    try:
        if world > 1:
            dist.barrier()
        ck_path = ctx.out / "checkpoint.pt"
        ck = read_checkpoint(ck_path, cfg, rank == 0) if cfg.resume and ck_path.exists() else None
        if cfg.resume and ck is None and rank == 0:
            print(f"--resume: no {ck_path} yet, starting from step 0", file=sys.stderr)
        if ck and rank == 0:
            match_model_pt(ctx.out, ck)
        sam, opt, scaler, gen, state = build(cfg, ctx, ck)
        stops.state = state
        del ck
        summary = {"out": str(ctx.out), "model": sam}
        if state.step >= cfg.steps:
            if rank == 0:
                print(f"{ck_path} is already at step {state.step}: nothing to do", file=sys.stderr)
            return {**summary, **dataclasses.asdict(state)}
        kind.check(cfg, ctx, sam.image_size)  # the model is loaded: what is free, a step gets
        sam.train()
        sam.image_encoder.train(cfg.train_encoder or cfg.lora_rank > 0)  # LoRA's dropout
        trainer = Trainable(sam, ctx.head)
        if world > 1:
            trainer = torch.nn.parallel.DistributedDataParallel(
                trainer, find_unused_parameters=True
            )
        train_cache = kind.cache(
            train_set, list(range(rank, len(train_set), world)), cfg, sam, device, rank == 0
        )
        share_images(train_cache, world, rank)
        val_ids = list(range(rank, len(val_set), world))
        val_cache = kind.cache(val_set, val_ids, cfg, sam, device, rank == 0, train_cache)
        if rank == 0:
            print(
                f"{len(train_set)} train / {len(val_set)} val {kind.noun}; feature cache: "
                f"{train_cache.mode}; device {device}, {world} process(es)",
                file=sys.stderr,
            )
            if (first := lora_first_block(sam)) is not None:
                per = cut_bytes(sam, first, train_cache.dtype)
                print(
                    f"LoRA rank {cfg.lora_rank} on trunk blocks {first}.."
                    f"{len(sam.image_encoder.trunk.blocks) - 1} ({cfg.lora_targets}): the cache "
                    f"holds the trunk's output before block {first}, {per / 2**20:.1f} MiB per "
                    f"{kind.noun[:-1]}",
                    file=sys.stderr,
                )
        fit(cfg, ctx, sam, trainer, opt, scaler, gen, state, train_cache, val_cache)
        scored = not math.isnan(state.first_iou)  # nothing to pick best.pt by, or to compare
        if cfg.eval_clicks and state.first_eval and scored:
            report_best(cfg, ctx, sam, val_cache, state.first_eval)
        if world > 1:
            check_replicas(sam)
            dist.destroy_process_group()
        if rank == 0:
            plot_curves(ctx.out / "log.csv", ctx.out / "curves.png")
            metric = recipe.metric
            files = "model.pt (final), best.pt (best val), checkpoint.pt (resume), log.csv"
            if scored:
                print(
                    f"done: {state.step} steps. val {metric} at step 0: {state.first_iou:.4f} -> "
                    f"best {state.best_iou:.4f}. Files in {ctx.out}: {files}, curves.png"
                    + (", eval.json (click curves)" if cfg.eval_clicks else "")
                )
            else:
                files = files.replace("best.pt (best val)", "best.pt (the base model)")
                print(
                    f"done: {state.step} steps. No val {metric}: {no_score_reason(cfg, val_set)}"
                    f"; so best.pt stays the base model (step 0) and model.pt is the trained "
                    f"one. Files in {ctx.out}: {files}, curves.png"
                )
    except BaseException:
        if rank == 0 and fresh and {p.name for p in ctx.out.iterdir()} <= {".lock"}:
            (ctx.out / ".lock").unlink(missing_ok=True)
            ctx.out.rmdir()  # a run that failed before writing anything leaves no folder
        raise
    finally:
        if lock is not None:
            lock.close()
    return {**summary, **dataclasses.asdict(state)}


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    plain_warnings()
    try:
        train(cfg)
    except (CheckpointError, SaveError, data.DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    except Stopped as e:
        if str(e):
            print(e, file=sys.stderr)
        raise SystemExit(128 + e.signum) from None


if __name__ == "__main__":
    main()
