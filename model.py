"""SAM 2 model helpers shared by train.py, infer.py and bench.py.

Load an official SAM 2 / 2.1 model (downloading the checkpoint when asked), run the frozen image
encoder on a batch of images, and decode point prompts for many images in one call, each prompt
against its own image's features.

    from model import load_model, encode_images, predict_logits, upscale_logits
    sam = load_model("small", checkpoint=None, device="cuda")   # downloads if missing
    feats = encode_images(sam, [rgb_uint8_hw3, ...])
    low_res, scores = predict_logits(sam, feats, img_idx, points_xy, sizes)
"""

from __future__ import annotations

import contextlib
import http.client
import os
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


@dataclass
class Features:
    """Frozen-encoder output for a batch of B images, in the layout SAM 2's mask decoder wants.

    image_embed: (B, 256, 64, 64); high_res: [(B, 32, 256, 256), (B, 64, 128, 128)].
    """

    image_embed: torch.Tensor
    high_res: list[torch.Tensor]

    def __len__(self) -> int:
        return self.image_embed.shape[0]

    def index(self, idx: torch.Tensor | list[int]) -> Features:
        """Features of the images `idx` (repeats allowed: one row per prompt)."""
        return Features(self.image_embed[idx], [h[idx] for h in self.high_res])

    def to(self, device=None, dtype=None, non_blocking: bool = False) -> Features:
        def mv(t):
            return t.to(device=device, dtype=dtype, non_blocking=non_blocking)

        return Features(mv(self.image_embed), [mv(h) for h in self.high_res])

    def pin_memory(self) -> Features:
        return Features(self.image_embed.pin_memory(), [h.pin_memory() for h in self.high_res])

    @staticmethod
    def cat(parts: list[Features]) -> Features:
        return Features(
            torch.cat([p.image_embed for p in parts]),
            [torch.cat([p.high_res[i] for p in parts]) for i in range(len(parts[0].high_res))],
        )


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


def download(url: str, dest: Path) -> Path:
    """Download `url` to `dest` with a progress bar; a failed or cut-off download never sits
    at `dest`. Raises CheckpointError saying how to go on offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    os.close(fd)  # unique name, so parallel ranks downloading the same file do not collide
    try:
        torch.hub.download_url_to_file(url, tmp)
        # A dropped connection can end the transfer without an error; torch's files are zips,
        # and a cut-off zip lacks its closing directory.
        if not zipfile.is_zipfile(tmp):
            raise OSError("the download is incomplete or not a PyTorch checkpoint")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as e:
        raise CheckpointError(
            f"could not download {url} ({e}).\n"
            f"Without internet, fetch that file elsewhere and put it at {dest}, or pass "
            f"--checkpoint PATH (or --checkpoint none for random weights)."
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def resolve_checkpoint(model: str, checkpoint: str | None) -> Path | None:
    """The weights file for `model`: `checkpoint` if given, None for 'none' (random init),
    else the official file in $SAM2_CHECKPOINT_DIR (default ~/.cache/sam2), downloaded from
    Meta if missing."""
    if model not in MODELS:
        raise ValueError(f"--model {model!r} is not one of {', '.join(MODELS)}")
    if checkpoint is not None and str(checkpoint).lower() == "none":
        return None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        return path
    url = MODELS[model][1]
    cache = Path(os.environ.get("SAM2_CHECKPOINT_DIR", Path.home() / ".cache" / "sam2"))
    path = cache / url.rsplit("/", 1)[1]
    if not path.is_file():
        print(f"downloading SAM 2 '{model}' weights to {path}", file=sys.stderr)
        download(url, path)
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a SAM 2 checkpoint ({'model': state_dict}) or a bare state_dict.
    Raises CheckpointError naming `path` if it is unreadable, holds no weights, or holds NaN/inf
    (such weights only give empty masks, or fail later with a less clear error)."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: empty file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
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
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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


def load_model(model: str = "small", checkpoint: str | None = None, device="cpu"):
    """Build SAM 2 `model` (a key of MODELS) with weights from `checkpoint`.

    checkpoint: a path (official SAM 2 file or a model.pt from train.py), None for the official
    weights (downloaded if missing), or 'none' for random init (with a warning).
    Returns the SAM2Base module in eval mode on `device`.
    """
    from sam2.build_sam import build_sam2

    path = resolve_checkpoint(model, checkpoint)
    with warnings.catch_warnings():  # sam2 1.1.0 still scripts a helper: not the user's concern
        warnings.filterwarnings("ignore", r"`torch.jit.script` is deprecated", FutureWarning)
        sam = build_sam2(MODELS[model][0], None, device="cpu", mode="eval")
    if path is None:
        warnings.warn(
            f"SAM 2 '{model}' has RANDOM weights (--checkpoint none): masks will be meaningless "
            "until trained. Use this only for tests and offline demos.",
            stacklevel=2,
        )
    else:
        sd = read_state_dict(path)
        check_fits(sam, sd, f"checkpoint {path} for model '{model}'")
        sam.load_state_dict(sd)
    return sam.to(device)


def freeze_for_finetune(sam, train_encoder: bool = False) -> list[torch.nn.Parameter]:
    """Make only the prompt encoder and mask decoder trainable (plus the image encoder when
    `train_encoder`); return the trainable parameters for the optimizer.

    The decoder's conv_s0/conv_s1 run inside forward_image (they project the encoder's high-res
    maps), so they belong to the frozen, cacheable part unless the encoder trains too.
    """
    sam.requires_grad_(False)
    sam.sam_prompt_encoder.requires_grad_(True)
    sam.sam_mask_decoder.requires_grad_(True)
    if train_encoder:
        sam.image_encoder.requires_grad_(True)
    elif getattr(sam, "use_high_res_features_in_sam", False):
        sam.sam_mask_decoder.conv_s0.requires_grad_(False)
        sam.sam_mask_decoder.conv_s1.requires_grad_(False)
    return [p for p in sam.parameters() if p.requires_grad]


def preprocess(images: list[np.ndarray], size: int, device) -> torch.Tensor:
    """RGB uint8 (H, W, 3) arrays -> normalized (B, 3, size, size) float tensor on `device`.

    Same math as SAM 2's own transforms (ToTensor, antialiased bilinear resize to a square,
    ImageNet normalization), done on the device so the CPU only decodes files.
    """
    out = []
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
        x = torch.from_numpy(np.ascontiguousarray(img)).to(device, non_blocking=True)
        x = x.permute(2, 0, 1)[None].float().div_(255)
        out.append(
            F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
        )
    x = torch.cat(out)
    mean = torch.tensor(PIXEL_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_images(sam, images: list[np.ndarray] | torch.Tensor) -> Features:
    """Run the image encoder on B images: list of RGB uint8 (H, W, 3) arrays of any sizes, or an
    already preprocessed (B, 3, 1024, 1024) tensor. Grad flows only if the encoder trains.

    This is the one place that reaches into SAM 2's internals (the same steps as
    SAM2ImagePredictor.set_image, which runs under no_grad and so cannot be used for training).
    """
    device = next(sam.parameters()).device
    x = images if torch.is_tensor(images) else preprocess(images, sam.image_size, device)
    out = sam.forward_image(x)
    maps = out["backbone_fpn"][-sam.num_feature_levels :]
    embed = maps[-1]
    if sam.directly_add_no_mem_embed:
        embed = embed + sam.no_mem_embed.view(1, -1, 1, 1)
    return Features(embed, list(maps[:-1]))


def decode(
    sam,
    feats: Features,
    img_idx: torch.Tensor,
    sizes: torch.Tensor,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one prompt per row, each against its own image's features.

    feats: features of B images; img_idx: (M,) long, each row's image; sizes: (B, 2) (H, W).
    points: (M, K, 2) float (x, y) in that image's pixels, labels: (M, K) int (1 positive,
    0 negative, -1 padding); boxes: (M, 4) float xyxy pixels; mask_input: (M, 1, 256, 256)
    low-res logits of a previous pass. At least one of points / boxes.
    Returns low-res logits (M, C, 256, 256) and predicted IoUs (M, C), C = 3 if multimask else 1.

    Boxes go in as two corner points (labels 2, 3) ahead of the clicks, as SAM2ImagePredictor
    and Meta's trainer pass them. A single positive click gives exactly model.predict_logits.
    """
    coords, labs = [], []
    if boxes is not None:
        coords.append(boxes.reshape(-1, 2, 2))
        corner = torch.arange(2, 4, dtype=torch.int, device=boxes.device)  # no host copy
        labs.append(corner.expand(len(boxes), 2))
    if points is not None:
        coords.append(points)
        labs.append(labels.int())
    if not coords:
        raise ValueError("decode: give points or boxes")
    coords = torch.cat(coords, 1)
    hw = sizes.to(coords)[img_idx]  # (M, 2) as (H, W)
    coords = coords / hw.flip(1)[:, None] * sam.image_size
    sparse, dense = sam.sam_prompt_encoder(
        points=(coords, torch.cat(labs, 1)), boxes=None, masks=mask_input
    )
    per_row = feats.index(img_idx)
    low_res, scores, _, _ = sam.sam_mask_decoder(
        image_embeddings=per_row.image_embed,
        image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=per_row.high_res,
    )
    return low_res, scores


def predict_logits(sam, feats: Features, img_idx, points, sizes, multimask: bool = True):
    """decode() with one positive click per row: points (M, 2) float (x, y) in pixels."""
    labels = torch.ones(len(points), 1, dtype=torch.int, device=points.device)
    return decode(sam, feats, img_idx, sizes, points[:, None], labels, multimask=multimask)


def upscale_logits(low_res: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(M, C, 256, 256) logits -> (M, C, H, W), bilinear as SAM 2's postprocess_masks."""
    return F.interpolate(low_res.float(), tuple(hw), mode="bilinear", align_corners=False)
