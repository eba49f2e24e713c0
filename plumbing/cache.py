"""The frozen encoder's features of a split's images, computed once per run, and the one probe
of how much memory a device has free."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from model import Features, TrunkCut, amp_dtype, autocast, encode_images, encode_until
from plumbing.files import DataError


def free_ram() -> int:
    """Bytes of RAM a process may still take: the system's MemAvailable (free pages plus the
    page cache the kernel can drop; MemFree alone reads ~0 on a machine whose page cache is
    full), MemFree where there is no /proc/meminfo."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024  # kB
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_bytes(device: torch.device) -> int:
    """Memory a run on `device` may still take: the GPU's free memory, or free_ram()."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return free_ram()


@dataclass
class CachedImage:
    """One image ready for the decoder: encoder features (1 image; with LoRA the TrunkCut that
    plumbing.lora.finish completes), instance masks (N, H, W) bool, one fixed click per mask
    (N, 2) xy (the validation prompts) and its size (H, W); with --auto-decoder also the
    instance head's targets (3, h, w) (autoseg.make_targets)."""

    feats: Features | TrunkCut
    masks: torch.Tensor
    points: torch.Tensor
    hw: tuple[int, int]
    targets: torch.Tensor | None = None

    def to(self, device, **kw) -> CachedImage:
        f, m, p = (
            self.feats.to(device, **kw),
            self.masks.to(device, **kw),
            self.points.to(device, **kw),
        )
        t = None if self.targets is None else self.targets.to(device, **kw)
        return CachedImage(f, m, p, self.hw, t)

    def pin(self) -> CachedImage:  # pinned CPU memory: uploads overlap the GPU's work
        t = None if self.targets is None else self.targets.pin_memory()
        return CachedImage(
            self.feats.pin_memory(), self.masks.pin_memory(), self.points.pin_memory(), self.hw, t
        )


class FeatureCache:
    """Frozen-encoder features of a split's images (`indices` of `dataset`: this rank's share),
    computed once: the encoder does not change during a run. Kept on the GPU, or in pinned CPU
    memory when that does not fit; with cache "off" or train_encoder, images are read and
    encoded when asked. `ids` lists the usable images (readable, with at least one instance).

    encode_batch: images per encoder call; workers: DataLoader processes reading them; cache:
    "auto", "gpu", "cpu" or "off" (train.py's --cache). lora_from: with LoRA, the first adapted
    trunk block: the cache holds the trunk's cut before it (model.encode_until, no grad: what
    is before never changes), and each step finishes it (plumbing.lora.finish) with grad.
    targets: masks (N, H, W) bool -> a (C, h, w) array computed once per image and kept beside
    its features (--auto-decoder's autoseg.make_targets), or None."""

    def __init__(
        self,
        dataset,
        indices: list[int],
        sam,
        device: torch.device,
        progress: bool = False,
        *,
        encode_batch: int = 8,
        workers: int = 2,
        cache: str = "auto",
        train_encoder: bool = False,
        lora_from: int | None = None,
        targets: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.dataset, self.sam, self.device = dataset, sam, device
        self.lora_from, self.targets = lora_from, targets
        self.encode_batch, self.workers, self.cache = encode_batch, workers, cache
        self.dtype = amp_dtype(device) or torch.float32  # what autocast computes in
        self.mode = "off" if train_encoder or cache == "off" else None
        self.images: dict[int, CachedImage] = {}
        self.ids: list[int] = []
        self._fill(indices, progress)

    def _fill(self, indices: list[int], progress: bool = False) -> None:
        from tqdm import tqdm

        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, indices),
            batch_size=self.encode_batch,
            num_workers=self.workers,
            collate_fn=list,
        )
        bar = tqdm(total=len(indices), desc="reading + encoding", disable=not progress, leave=False)
        for start, samples in zip(range(0, len(indices), self.encode_batch), loader):
            bar.update(len(samples))
            keep = [(i, s) for i, s in zip(indices[start:], samples) if s and len(s.masks)]
            self.ids += [i for i, _ in keep]
            if keep and self.mode != "off":
                with torch.no_grad():
                    images = self.encode([s for _, s in keep])
                self.mode = self.mode or self._choose_mode(images, len(indices))
                for (i, _), im in zip(keep, images):
                    self._store(i, im)
        bar.close()
        self.mode = self.mode or "off"

    def encode(self, samples: list) -> list[CachedImage]:
        """Run the encoder on `samples` (data.Sample) -> one CachedImage each, on the device."""
        images = [s.image for s in samples]
        if self.lora_from is not None:  # nothing before the cut trains: never any grad there
            with torch.no_grad(), autocast(self.device):
                feats = encode_until(self.sam, images, self.lora_from).to(dtype=self.dtype)
        else:
            with autocast(self.device):
                feats = encode_images(self.sam, images)
        if not torch.is_grad_enabled():
            feats = feats.to(dtype=self.dtype)  # half the memory; the decoder casts it anyway
        return [
            CachedImage(
                feats.index([k]),
                torch.from_numpy(s.masks).to(self.device),
                torch.from_numpy(s.points).to(self.device),
                s.image.shape[:2],
                None if self.targets is None else self._targets(s.masks),
            )
            for k, s in enumerate(samples)
        ]

    def _targets(self, masks: np.ndarray) -> torch.Tensor:
        # half precision: ~0.4 MB an image at 1024 px (its features: ~8 MB); the loss casts
        return torch.from_numpy(self.targets(masks)).to(self.device, torch.float16)

    def _choose_mode(self, images: list[CachedImage], n: int) -> str:
        """'gpu', 'cpu' or 'off' by `cache` and the free memory, from the first batch's size."""
        if self.cache != "auto":
            return "cpu" if self.cache == "gpu" and self.device.type != "cuda" else self.cache
        tensors = [im.masks for im in images]
        tensors += [im.targets for im in images if im.targets is not None]
        extra = sum(t.numel() * t.element_size() for t in tensors)
        need = 1.5 * n * (sum(im.feats.nbytes() for im in images) + extra) / len(images)
        if self.device.type == "cuda" and need < 0.5 * free_bytes(self.device):
            return "gpu"
        if need < 0.5 * free_ram():
            return "cpu"
        warnings.warn(f"feature cache would need {need / 2**30:.1f} GiB: running without it")
        return "off"

    def _store(self, i: int, im: CachedImage) -> None:
        if self.mode == "gpu":
            self.images[i] = im
        elif self.mode == "cpu":
            im = im.to("cpu")
            self.images[i] = im.pin() if self.device.type == "cuda" else im

    def keep(self, ids: list[int]) -> None:
        """Hold exactly `ids` (reading and encoding the ones not held yet)."""
        self.images = {i: self.images[i] for i in ids if i in self.images}
        new = [i for i in ids if i not in self.ids]
        self.ids = [i for i in self.ids if i in ids]
        self._fill(new)

    def get(self, ids: list[int]) -> list[CachedImage]:
        """CachedImages of `ids` on the training device (read and encoded now if not cached)."""
        if self.mode != "off":
            return [self.images[i].to(self.device, non_blocking=True) for i in ids]
        samples = [self.dataset[i] for i in ids]
        if not all(s and len(s.masks) for s in samples):
            raise DataError(f"an image of {ids} became unreadable during the run")
        return self.encode(samples)


def share_images(cache, world: int, rank: int) -> None:
    """Deal the usable images out again when some rank has none of its own (the others would
    wait for it forever); every rank raises the same error when there are none at all."""
    if world > 1:
        lists: list = [None] * world
        dist.all_gather_object(lists, cache.ids)
        usable = sorted(i for ids in lists for i in ids)
        if usable and min(map(len, lists)) == 0:
            cache.keep(usable[rank::world] or [usable[rank % len(usable)]])
    else:
        usable = cache.ids
    if not usable:
        raise DataError("no usable training image: every one was unreadable or empty")
