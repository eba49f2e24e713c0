"""Weights and devices: Meta's checkpoints, reading weight files safely, which model a file
holds and whether it fits, and the device and precision SAM 2 runs in. model.py builds the
model from these and re-exports them."""

from __future__ import annotations

import contextlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

# name -> (config bundled in the sam2 package, file name, Meta's URL)
_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
MODELS: dict[str, tuple[str, str]] = {
    "tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", _BASE_21 + "sam2.1_hiera_tiny.pt"),
    "small": ("configs/sam2.1/sam2.1_hiera_s.yaml", _BASE_21 + "sam2.1_hiera_small.pt"),
    "base_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", _BASE_21 + "sam2.1_hiera_base_plus.pt"),
    "large": ("configs/sam2.1/sam2.1_hiera_l.yaml", _BASE_21 + "sam2.1_hiera_large.pt"),
    "tiny-2.0": ("configs/sam2/sam2_hiera_t.yaml", _BASE_20 + "sam2_hiera_tiny.pt"),
    "small-2.0": ("configs/sam2/sam2_hiera_s.yaml", _BASE_20 + "sam2_hiera_small.pt"),
    "base_plus-2.0": ("configs/sam2/sam2_hiera_b+.yaml", _BASE_20 + "sam2_hiera_base_plus.pt"),
    "large-2.0": ("configs/sam2/sam2_hiera_l.yaml", _BASE_20 + "sam2_hiera_large.pt"),
}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def plain_warnings() -> None:
    """Command-line warnings as one 'warning: ...' line, without Python's source-line echo."""
    warnings.formatwarning = lambda msg, cat, *args, **kw: f"warning: {msg}\n"


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu; anything else is checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device torch knows ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name!r}: MPS is not available on this machine")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype mixed precision computes in on `device`: bf16 on CUDA cards with bf16 units
    (compute capability 8.0+), fp16 on older ones (train with a GradScaler there), None (fp32)
    on CPU and MPS."""
    if device.type != "cuda":
        return None
    # Not torch.cuda.is_bf16_supported(): it counts bf16 emulated in fp32 units (V100, T4),
    # and asks about the current device rather than `device`.
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def autocast(device: torch.device) -> contextlib.ExitStack:
    """How SAM 2 runs on `device`: mixed precision in amp_dtype(device) (none where that is
    None) and, on CUDA, no cuDNN attention: the number of prompts changes every step, and cuDNN
    plans each new shape on the CPU (20 ms per attention call on an H200, 10x the GPU work)."""
    stack = contextlib.ExitStack()
    if dtype := amp_dtype(device):
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        stack.enter_context(sdpa_kernel(backends))
    return stack


@contextlib.contextmanager
def evaluating(module: torch.nn.Module):
    """`module` in eval mode for the `with` block: each submodule's training flag is saved,
    eval() set, and every flag restored on the way out (a frozen encoder stays in eval mode)."""
    modes = [m.training for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in zip(module.modules(), modes):
            m.train(mode)


def load_tensors(path, **kw):
    """torch.load of tensors and plain containers only (weights_only=True), on the CPU. A file
    holding other Python objects is refused unloaded (CheckpointError naming it): unpickling
    those runs code chosen by whoever made the file."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: noise here
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, **kw)
    except pickle.UnpicklingError as e:  # torch's text would advise weights_only=False
        if "Weights only load failed" not in str(e):
            raise
        if found := re.search(r"GLOBAL (\S+)", str(e)):
            raise CheckpointError(
                f"{path} is not a plain weights file: it holds Python objects other than "
                f"tensors ({found[1]}), and loading those could run any code, so it was not "
                "loaded. Use a file of tensors only: torch.save({'model': state_dict}, path)"
            ) from None
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint") from None
        detail = re.search(r"(Unsupported[^\n]*)", str(e))
        raise CheckpointError(
            f"{path} is not a plain weights file: it cannot be read as tensors only"
            + (f" ({detail[1].strip()})" if detail else "")
            + ", so it was not loaded"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a SAM 2 checkpoint ({'model': state_dict}) or a bare state_dict.
    Raises CheckpointError naming `path` if it is unreadable, holds no weights or other Python
    objects, or holds NaN/inf (such weights only give empty masks, or fail later with a less
    clear error)."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: empty file")
    try:
        obj = load_tensors(path)
    except CheckpointError:
        raise
    except Exception as e:  # torch raises many types for corrupt or foreign files
        if not zipfile.is_zipfile(path):  # what torch.save writes (the reason would be noise)
            raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} holds no model weights (expected {{'model': state_dict}})")
    bad = next((k for k, v in sd.items() if v.is_floating_point() and not v.isfinite().all()), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} has non-finite weights (NaN or inf in {bad})")
    return sd


# (channels of the image encoder's patch embedding, its number of Hiera blocks) -> model size,
# as in sam2's configs/sam2.1/*.yaml (base_plus uses Hiera's default stages, 2+3+16+3)
_ENCODER_SIZES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}


def guess_model(sd: dict[str, torch.Tensor]) -> str | None:
    """The key of MODELS whose tensor shapes `sd` has, read from its image encoder's width and
    depth and a tensor only SAM 2.1 has; None if it looks like none of them."""
    patch = sd.get("image_encoder.trunk.patch_embed.proj.weight")
    blocks = {k.split(".")[3] for k in sd if k.startswith("image_encoder.trunk.blocks.")}
    name = _ENCODER_SIZES.get((patch.shape[0], len(blocks))) if patch is not None else None
    if name and "no_obj_embed_spatial" not in sd:
        name += "-2.0"
    return name


def model_name_in(path) -> str | None:
    """The model `path` holds weights for: the name train.py stored in its model.pt
    ('model_name'), else the size its tensor shapes point to; None if unreadable or unknown."""
    try:
        obj = load_tensors(path, mmap=True)
        name = obj.get("model_name")
        return name if name in MODELS else guess_model(obj.get("model", obj))
    except Exception:  # not a checkpoint of ours or SAM 2's: load_model will say why
        return None


def check_fits(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError naming `what` unless `sd` has exactly the tensors of `module`, in
    their shapes (and say which --model it fits instead). Checked before loading: never a
    partial load."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in sd
        if k in own and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{len(x)} {name} (e.g. {', '.join(x[:3])})"
            for name, x in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong-shape", wrong),
            )
            if x
        ]
        hint = ""
        if (other := guess_model(sd)) and other != guess_model(own):
            hint = f"; its shapes are those of another model size: pass --model {other}"
        raise CheckpointError(f"{what} does not fit: " + "; ".join(parts) + hint)
