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
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
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


def autocast(device: torch.device):
    """Mixed precision for `device`: bf16 on CUDA where supported, else fp16; fp32 elsewhere."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def checkpoint_dir() -> Path:
    """Where official checkpoints are cached: $SAM2_CHECKPOINT_DIR or ~/.cache/sam2."""
    return Path(os.environ.get("SAM2_CHECKPOINT_DIR", Path.home() / ".cache" / "sam2"))


def download(url: str, dest: Path, progress: bool = True) -> Path:
    """Download `url` to `dest` atomically (a partial download never sits at `dest`)."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=30) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                disable=not progress,
                file=sys.stderr,
            ) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
            if total is not None and f.tell() != total:
                raise OSError(f"got {f.tell()} of {total} bytes")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(
            f"could not download {url} ({e}).\n"
            f"Without internet, fetch that file elsewhere and put it at {dest}, or pass "
            f"--checkpoint PATH (or --checkpoint none for random weights)."
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def resolve_checkpoint(model: str, checkpoint: str | None) -> Path | None:
    """The weights file for `model`: `checkpoint` if given, None for 'none' (random init),
    else the official file in checkpoint_dir(), downloaded from Meta if missing."""
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
    path = checkpoint_dir() / url.rsplit("/", 1)[1]
    if not path.is_file():
        print(f"downloading SAM 2 '{model}' weights to {path}", file=sys.stderr)
        download(url, path)
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Model weights from a SAM 2 checkpoint ({'model': state_dict}) or a bare state_dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} holds no model weights (expected {{'model': state_dict}})")
    return sd


def model_name_in(path) -> str | None:
    """The model name train.py stored in its model.pt ('model_name'), or None (official files)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    name = obj.get("model_name") if isinstance(obj, dict) else None
    return name if name in MODELS else None


def check_fits(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, strict=True):
    """Raise CheckpointError naming `what` unless every tensor of `sd` fits `module`
    (and, when strict, `sd` covers all of it). Checked before loading: never a partial load."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd] if strict else []
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
        raise CheckpointError(f"{what} does not fit: " + "; ".join(parts))


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


def predict_logits(
    sam,
    feats: Features,
    img_idx: torch.Tensor,
    points: torch.Tensor,
    sizes: torch.Tensor,
    multimask: bool = True,
):
    """Decode one point prompt per row, each against its own image.

    feats: features of B images; img_idx: (M,) long, the image of each prompt;
    points: (M, 2) float (x, y) in pixels of that image; sizes: (B, 2) its (H, W).
    Returns low-res mask logits (M, C, 256, 256) and predicted IoU scores (M, C),
    C = 3 when multimask else 1.
    """
    hw = sizes.to(points)[img_idx]  # (M, 2) as (H, W)
    coords = points / hw.flip(1) * sam.image_size
    labels = torch.ones(len(points), 1, dtype=torch.int, device=points.device)
    sparse, dense = sam.sam_prompt_encoder(points=(coords[:, None], labels), boxes=None, masks=None)
    per_prompt = feats.index(img_idx)
    low_res, scores, _, _ = sam.sam_mask_decoder(
        image_embeddings=per_prompt.image_embed,
        image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=per_prompt.high_res,
    )
    return low_res, scores


def upscale_logits(low_res: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(M, C, 256, 256) logits -> (M, C, H, W), bilinear as SAM 2's postprocess_masks."""
    return F.interpolate(low_res.float(), tuple(hw), mode="bilinear", align_corners=False)
