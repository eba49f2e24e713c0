"""The video machinery of --recipe video: the memory a step needs and the check before the
first one, the clip cache (frame features kept while there is room), clip sampling, and J&F
(DAVIS's scores, for validation, train.py's eval.json and evaluate.py --video). The recipe
itself (prompts, loss) is recipes.video_recipe; model.track_clip unrolls SAM 2's memory.

The memory helpers and sample_clips read the clip settings by name from `clip` (anything with
batch_size, frames, objects, accumulate, ignore_memory: train.Config, or a namespace)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from layouts.video import VOID, first_object_frame, object_ids, read_frame, video_labels
from model import (
    Features,
    TrunkCut,
    amp_dtype,
    autocast,
    encode_frames,
    encode_until,
    evaluating,
    frame_prompt,
    track_clip,
    upscale_logits,
)
from plumbing.cache import free_bytes
from plumbing.ddp import agreed, mean_over_ranks
from plumbing.lora import finish
from plumbing.masks import next_clicks

# activations kept for backward, bf16, hiera any size (docs/video.md#cost)
GIB_PER_OBJECT_FRAME = 0.75
GIB = 2**30


@dataclass
class Clip:
    """A training clip of T frames and B objects: feats, T rows of encode_frames features (with
    LoRA their TrunkCut, which the recipe finishes: plumbing.lora.finish); gts, per frame
    (B, H, W) bool masks of the objects (None: no ground truth there); void, per frame (H, W)
    bool pixels to ignore, or None."""

    feats: Features | TrunkCut
    gts: list[torch.Tensor | None]
    void: list[torch.Tensor | None]


# ----------------------------------------------------------------------------- memory


def object_frame_bytes(device: torch.device, image_size: int = 1024) -> float:
    """Activations one object-frame keeps for backward: GIB_PER_OBJECT_FRAME in bf16 / fp16,
    twice that in fp32 (CPU, MPS: bench.py measured 5.5 GiB for 2 frames x 2 objects on the
    CPU), in proportion to the pixels of SAM 2's input (1024 x 1024 for every released model)."""
    return GIB_PER_OBJECT_FRAME * (1 if amp_dtype(device) else 2) * (image_size / 1024) ** 2 * GIB


def video_step_bytes(clip, per: float) -> float:
    """The estimated activations of one micro-batch of the video recipe (clip.batch_size clips
    of clip.frames x clip.objects, `per` bytes an object-frame): what must fit in the free
    memory. The micro-batches a step accumulates run one after the other: they add nothing."""
    return clip.batch_size * clip.frames * clip.objects * per


def fitting_flags(clip, per: float, free: float) -> str | None:
    """Flags whose video_step_bytes fit in `free` bytes: one clip a micro-batch (--accumulate
    keeps the clips a step), then the most frames x objects, at least 2 frames (ties: more
    frames); "" if `clip` fits as it is, None if not even 2 frames of 1 object fit."""
    fit = int(free // per)  # object-frames that fit
    best = None
    for objects in range(min(clip.objects, fit), 0, -1):
        frames = min(clip.frames, fit // objects)
        if frames >= 2 and (best is None or frames * objects >= best[0] * best[1]):
            best = (frames, objects)
    if best is None:
        return None
    flags = []
    if clip.batch_size > 1:
        flags += ["--batch-size 1", f"--accumulate {clip.batch_size * clip.accumulate}"]
    flags += [f"--frames {best[0]}"] if best[0] != clip.frames else []
    flags += [f"--objects {best[1]}"] if best[1] != clip.objects else []
    return " ".join(flags)


def gib_text(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def check_video_memory(clip, device: torch.device, world: int, image_size: int) -> None:
    """Refuse (ValueError naming flags that fit) a video run whose step's estimated activations
    exceed the free memory of its device, before its first step: past it, the kernel kills the
    process without a message (CPU) or CUDA runs out mid-step. clip.ignore_memory: only warn."""
    per = object_frame_bytes(device, image_size)
    need, free = video_step_bytes(clip, per), free_bytes(device)
    if not agreed(need > free, world, device):  # every process refuses if one would run out
        return
    where = "GPU memory" if device.type == "cuda" else "RAM (fp32 on the CPU)"
    text = (
        f"a --recipe video step needs about {gib_text(need)} of {where} for activations "
        f"(--batch-size {clip.batch_size} x --frames {clip.frames} x --objects {clip.objects} x "
        f"{gib_text(per)}), and {gib_text(free)} are available"
    )
    if clip.ignore_memory:
        warnings.warn(f"{text}: going on (--ignore-memory); the run may be killed")
        return
    flags = fitting_flags(clip, per, free)
    fix = (
        f"These fit: {flags}"
        if flags
        else "Not even --batch-size 1 --frames 2 --objects 1 fits: free memory or use a GPU"
    )
    raise ValueError(
        f"{text}: the run would be killed when memory runs out. {fix} (or pass --ignore-memory "
        "to start anyway)"
    )


# ----------------------------------------------------------------------------- clips


class ClipCache:
    """Frozen-encoder features of video frames (`indices` of `videos`: this rank's share),
    computed the first time a clip or an evaluation needs them and kept while there is room: on
    the GPU in half of what a step's activations (`step_bytes`, video_step_bytes) leave free,
    then in (pinned) CPU memory up to half the free RAM (`cache` "gpu" / "cpu" / "off" narrow
    that); frames beyond are encoded again when used. `ids` lists the usable videos: those with
    an annotated frame that shows an object; `first` maps each to the first such frame (where
    clips start when the frame drawn shows none). lora_from: with LoRA, the first adapted trunk
    block: frames are kept as the trunk's cut before it (model.encode_until), under the same
    room rules, and finished by each step (plumbing.lora.finish)."""

    def __init__(
        self,
        videos,
        indices: list[int],
        sam,
        device: torch.device,
        progress: bool = False,
        *,
        cache: str = "auto",
        step_bytes: float = 0.0,
        lora_from: int | None = None,
    ):
        self.videos, self.sam, self.device = videos, sam, device
        self.lora_from = lora_from
        self.dtype = amp_dtype(device) or torch.float32
        self.feats: dict[tuple[int, int], Features] = {}
        self.first: dict[int, int] = {}  # video -> its first annotated frame with an object
        self.keep(indices)
        gpu = device.type == "cuda" and cache in ("auto", "gpu")
        cpu = cache in ("auto", "cpu") or cache == "gpu" and not gpu
        ram, free = free_bytes(torch.device("cpu")), free_bytes(device)
        if device.type != "cuda":  # the step's activations come out of the same RAM
            ram = max(ram - step_bytes, 0)
        # shared with the validation cache (train.run_training): one budget for both
        gpu_room = max(free - step_bytes, 0) / 2 if gpu else 0
        self.room = {"gpu": gpu_room, "cpu": ram / 2 if cpu else 0}
        self.mode = "frames kept in GPU / CPU: {:.1f} / {:.1f} GiB".format(
            *(v / 2**30 for v in self.room.values())
        )

    def keep(self, ids: list[int]) -> None:
        """Use exactly the videos `ids` (those usable)."""
        for i in ids:
            if (t := first_object_frame(self.videos[i])) is not None:
                self.first[i] = t
            else:  # load_videos has left such videos out already
                warnings.warn(f"skipping video {self.videos[i].name}: no frame shows an object")
        self.ids = [i for i in ids if i in self.first]

    def frames(self, i: int, ts: list[int]) -> Features | TrunkCut:
        """Features (with LoRA: TrunkCut) of frames `ts` of video i, (len(ts), ...) on the
        training device."""
        out = []
        for t in ts:
            if (f := self.feats.get((i, t))) is None:  # one frame a call: the same numbers always
                image = [read_frame(self.videos[i], t)]
                with torch.no_grad(), autocast(self.device):
                    if self.lora_from is None:
                        f = encode_frames(self.sam, image)
                    else:
                        f = encode_until(self.sam, image, self.lora_from)
                f = f.to(dtype=self.dtype)
                self._store((i, t), f)
            out.append(f.to(self.device, non_blocking=True))
        return type(out[0]).cat(out)

    def _store(self, key: tuple[int, int], f: Features | TrunkCut) -> None:
        size = f.nbytes()
        for where in ("gpu", "cpu"):
            if self.room[where] >= size:
                self.room[where] -= size
                if where == "cpu":
                    f = f.to("cpu").pin_memory() if self.device.type == "cuda" else f.to("cpu")
                self.feats[key] = f
                return

    def items(self, sam=None):
        """(frame(t) -> features, label maps) of each video, for evaluate_videos; with LoRA the
        cut is finished by `sam` (default the cache's model; report_best's best.pt: another)."""
        sam = sam or self.sam
        for i in self.ids:
            v = self.videos[i]
            yield (
                (lambda t, i=i: finish(sam, self.frames(i, [t]), video=True)),
                [video_labels(v, t) for t in range(len(v.frames))],
            )


def sample_clips(cache: ClipCache, ids: list[int], clip, gen) -> list[Clip]:
    """A clip from each video `ids` (Meta's RandomUniformSampler): clip.frames consecutive frames
    from a random annotated frame (the video's first when the one drawn shows no object), and up
    to clip.objects random objects among those that frame shows."""
    clips, dev = [], cache.device
    for i in ids:
        v, n = cache.videos[i], len(cache.videos[i].frames)
        annotated = [t for t, a in enumerate(v.labels) if a and t + clip.frames <= n]
        starts = annotated or [cache.first[i]]
        t0 = starts[int(torch.rand(1, generator=gen, device=gen.device).item() * len(starts))]
        if not len(objects := object_ids(video_labels(v, t0))):
            t0 = cache.first[i]
            objects = object_ids(video_labels(v, t0))
        pick = torch.randperm(len(objects), generator=gen, device=gen.device)[: clip.objects]
        objects, ts = objects[pick.cpu().numpy()], list(range(t0, min(t0 + clip.frames, n)))
        gts, void = [], []
        for a in (video_labels(v, t) for t in ts):
            gts.append(None if a is None else torch.from_numpy(a == objects[:, None, None]).to(dev))
            bad = a is None or not (a == VOID).any()
            void.append(None if bad else torch.from_numpy(a == VOID).to(dev))
        clips.append(Clip(cache.frames(i, ts), gts, void))
    return clips


def video_eval(sam, cache: ClipCache, device, world: int, prompts=("mask",), progress=False):
    """evaluate_videos on the cached validation videos (means over every rank's objects)."""
    m = evaluate_videos(sam, cache.items(sam), prompts, progress, len(cache.ids))
    return mean_over_ranks(m, world, device)


# ----------------------------------------------------------------------------- video: J&F
#
# DAVIS's semi-supervised protocol (davis2017-evaluation): each object is given on the first frame
# that shows it (by its mask, the standard, or by one click at its centre), tracked to the end in
# eval mode, and scored on the later annotated frames except the video's last (DAVIS leaves out
# both). J is the IoU; F the F-measure of the boundary pixels of prediction and ground truth,
# each matched if the other's boundary is within ceil(0.008 x the frame's diagonal) px. Void
# pixels (255) are background, as davis2017-evaluation's semi-supervised scoring reads them (a
# prediction spilling onto the void ring around an object counts against it); void="ignore"
# makes them count for neither (jaccard's and boundary_f's `void`, as its metrics allow but its
# semi-supervised task never uses). Both are averaged over an object's frames, then over
# objects; J&F is their mean.

BOUND_TH = 0.008
VOID_RULES = ("background", "ignore")  # the first: davis2017-evaluation's


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """DAVIS's J of two (H, W) bool masks: their IoU outside `void`, 1 when both are empty."""
    keep = ~void if void is not None else np.ones_like(gt)
    union = ((pred | gt) & keep).sum()
    return float(((pred & gt) & keep).sum() / union) if union else 1.0


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> its 1-px boundary as DAVIS draws it: pixels whose right, lower or
    lower-right neighbour differs, the image continuing its last row and column."""
    p = np.pad(mask, ((0, 1), (0, 1)), mode="edge")
    return (mask != p[:-1, 1:]) | (mask != p[1:, :-1]) | (mask != p[1:, 1:])


def boundary_f(
    pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """DAVIS's F of two (H, W) bool masks: 2PR / (P + R) of their boundary pixels, a pixel
    matched when the other boundary is within r = ceil(bound_th x diagonal) px (bound_th >= 1:
    r = bound_th). Both boundaries empty: 1; one empty: 0."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    r = int(bound_th if bound_th >= 1 else np.ceil(bound_th * np.hypot(*gt.shape)))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    disk = (x * x + y * y <= r * r).astype(np.uint8)
    bp, bg = boundary(pred), boundary(gt)
    if not bp.any() or not bg.any():
        return float(bp.any() == bg.any())
    precision = (bp & cv2.dilate(bg.astype(np.uint8), disk).astype(bool)).sum() / bp.sum()
    recall = (bg & cv2.dilate(bp.astype(np.uint8), disk).astype(bool)).sum() / bg.sum()
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


@torch.no_grad()
def score_video(
    sam, frame, labels: list, prompt: str = "mask", void: str = "background"
) -> list[tuple[float, float]]:
    """(J, F) of each object of one video, tracked by `sam` in eval mode (see above).

    frame(t) -> encode_frames features of frame t; labels: per frame (H, W) int object ids
    (video_labels), None where not annotated; prompt: "mask" or "click"; void: how label
    255 counts, "background" (davis2017-evaluation's rule) or "ignore" (neither way).
    """
    if void not in VOID_RULES:
        raise ValueError(f"void must be one of {VOID_RULES}, got {void!r}")
    first: dict[int, int] = {}
    for t, lab in enumerate(labels):
        for i in [] if lab is None else np.unique(lab).tolist():
            first.setdefault(i, t)
    first = {i: t for i, t in first.items() if i not in (0, VOID)}
    device, scores = next(sam.parameters()).device, []
    for start in sorted(t for t in set(first.values()) if t < len(labels) - 2):  # else no score
        ids = np.array([i for i, t in first.items() if t == start])
        gts = labels[start][None] == ids[:, None, None]
        if prompt == "mask":
            p = frame_prompt(sam, gts.shape[1:], masks=torch.from_numpy(gts).to(device))
        else:
            xy = torch.from_numpy(next_clicks(gts, np.zeros_like(gts))[0][:, None]).to(device)
            one = torch.ones(len(ids), 1, dtype=torch.int32, device=device)
            p = frame_prompt(sam, gts.shape[1:], xy, one)
        j, f = [[] for _ in ids], [[] for _ in ids]
        with autocast(device):
            for t, _, low_res in track_clip(sam, frame, len(labels), len(ids), {start: p}):
                if labels[t] is None or t in (start, len(labels) - 1):
                    continue
                pred = (upscale_logits(low_res, labels[t].shape)[:, 0] > 0).cpu().numpy()
                skip = labels[t] == VOID if void == "ignore" else None
                for k, i in enumerate(ids):
                    j[k].append(jaccard(pred[k], labels[t] == i, skip))
                    f[k].append(boundary_f(pred[k], labels[t] == i, skip))
        scores += [(np.mean(a), np.mean(b)) for a, b in zip(j, f) if a]
    return scores


def evaluate_videos(
    sam, videos: Iterable, prompts=("mask", "click"), progress=True, total=None, void="background"
) -> dict[str, float]:
    """J, F and J&F (means over objects) of each prompt protocol over (frame, labels) pairs (see
    score_video, which takes `void`), as keys j_mask, f_mask, jf_mask, j_click, ...; 'masks'
    counts the objects. Runs `sam` in eval mode and restores its modes after."""
    from tqdm import tqdm

    scores: dict[str, list] = {p: [] for p in prompts}
    with evaluating(sam):
        for frame, labels in tqdm(videos, total=total, desc="J&F", disable=not progress):
            for p in prompts:
                scores[p] += score_video(sam, frame, labels, p, void)
    out: dict[str, float] = {"masks": len(scores[prompts[0]]), "max_clicks": 1}
    for p, s in scores.items():
        j, f = np.array(s).reshape(-1, 2).mean(0) if s else (np.nan, np.nan)
        out |= {f"jf_{p}": float((j + f) / 2), f"j_{p}": float(j), f"f_{p}": float(f)}
    return out


def encoded_videos(sam, videos: list, device):
    """(frame(t) -> encode_frames features, label maps) of each layouts.video.Video, for
    evaluate_videos; frames are read and encoded when tracking reaches them."""
    for v in videos:

        def frame(t, v=v):
            with torch.no_grad(), autocast(device):
                return encode_frames(sam, [read_frame(v, t)])

        yield frame, [video_labels(v, t) for t in range(len(v.frames))]
