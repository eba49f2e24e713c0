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

import http.client
import os
import shutil
import sys
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plumbing.files import write_atomic
from plumbing.weights import (  # noqa: F401  (the public names of model.py)
    MODELS,
    CheckpointError,
    amp_dtype,
    autocast,
    check_fits,
    evaluating,
    guess_model,
    load_tensors,
    model_name_in,
    plain_warnings,
    read_state_dict,
    resolve_device,
)

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


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

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.image_embed, *self.high_res))

    @staticmethod
    def cat(parts: list[Features]) -> Features:
        return Features(
            torch.cat([p.image_embed for p in parts]),
            [torch.cat([p.high_res[i] for p in parts]) for i in range(len(parts[0].high_res))],
        )


def download(url: str, dest: Path) -> Path:
    """Download `url` to `dest` with a progress bar; a failed or cut-off download never sits
    at `dest`. Raises CheckpointError saying how to go on offline."""
    from tqdm import tqdm

    def fetch(f) -> None:
        # torch.hub's user agent, which Meta's server has always been asked with
        request = urllib.request.Request(url, headers={"User-Agent": "torch.hub"})
        with urllib.request.urlopen(request) as r:
            size = int(r.headers.get("Content-Length") or 0) or None
            with tqdm.wrapattr(f, "write", total=size) as out:
                shutil.copyfileobj(r, out)
        # A dropped connection can end the transfer without an error; torch's files are zips,
        # and a cut-off zip lacks its closing directory.
        if not zipfile.is_zipfile(f):
            raise OSError("the download is incomplete or not a PyTorch checkpoint")

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:  # a unique part file: parallel ranks downloading the same file do not collide
        write_atomic(dest, fetch)
    except (OSError, http.client.HTTPException) as e:
        raise CheckpointError(
            f"could not download {url} ({e}).\n"
            f"Without internet, fetch that file elsewhere and put it at {dest}, or pass "
            f"--checkpoint PATH (or --checkpoint none for random weights)."
        ) from None
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


# ----------------------------------------------------------------------------- video: memory
#
# SAM 2 tracks an object by memory: each frame's mask is encoded (memory encoder), and the next
# frames attend to the memories and object pointers of the prompted frame and of the last few
# frames (memory attention). Meta's trainer (training/model/sam2.py, SAM2Train) unrolls SAM2Base's
# own steps over a clip; track_clip does the same on cached encoder features.


def encode_frames(sam, images: list[np.ndarray] | torch.Tensor) -> Features:
    """encode_images for the video path: the same maps without the no-memory embedding, which
    track_clip adds itself on prompted frames (as SAM2Base does)."""
    device = next(sam.parameters()).device
    x = images if torch.is_tensor(images) else preprocess(images, sam.image_size, device)
    maps = sam.forward_image(x)["backbone_fpn"][-sam.num_feature_levels :]
    return Features(maps[-1], list(maps[:-1]))


def freeze_for_video(sam) -> list[torch.nn.Parameter]:
    """Everything but the image encoder trains (prompt encoder, mask decoder, memory attention,
    memory encoder, object-pointer and occlusion parts, memory embeddings); returns those
    parameters. conv_s0/s1 stay frozen with the encoder they run behind (freeze_for_finetune)."""
    freeze_for_finetune(sam)
    head = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.")
    for name, p in sam.named_parameters():
        if not name.startswith(head):
            p.requires_grad_(True)
    return [p for p in sam.parameters() if p.requires_grad]


def frame_prompt(sam, hw, points=None, labels=None, boxes=None, masks=None) -> dict:
    """One frame's prompts for B objects, in SAM 2's input frame as SAM2VideoPredictor makes them.

    hw: the frame's (H, W). points (B, P, 2) float (x, y) pixels with labels (B, P) int, and/or
    boxes (B, 4) xyxy pixels (two corner points labelled 2 and 3, ahead of the clicks); or masks
    (B, H, W) bool (resized to image_size, antialiased, kept where >= 0.5, as add_new_mask does).
    Returns SAM2Base's point_inputs {"point_coords": (B, P', 2), "point_labels": (B, P') int32}
    or {"mask": (B, 1, S, S) float}.
    """
    s = sam.image_size
    if masks is not None:
        m = F.interpolate(
            masks[:, None].float(), (s, s), mode="bilinear", align_corners=False, antialias=True
        )
        return {"mask": (m >= 0.5).float()}
    coords, labs = [], []
    if boxes is not None:
        coords.append(boxes.float().reshape(-1, 2, 2))
        corner = torch.tensor([2, 3], dtype=torch.int32, device=boxes.device)
        labs.append(corner.expand(len(boxes), 2))
    if points is not None:
        coords.append(points.float())
        labs.append(labels.to(torch.int32))
    wh = torch.tensor([hw[1], hw[0]], dtype=torch.float32, device=coords[0].device)
    return {"point_coords": torch.cat(coords, 1) / wh * s, "point_labels": torch.cat(labs, 1)}


def track_clip(sam, frame, num_frames: int, n_obj: int, prompts: dict, correct=None, clicks=0):
    """Track B = n_obj objects through a clip with SAM 2's memory, as SAM2Train; yields per frame
    (t, passes [(masks (B, C, h, w), scores (B, C), object logits (B, 1)) per decoder pass],
    the low-res logits shown (B, 1, h, w)).

    frame(t) -> Features of frame t (encode_frames, 1 row). prompts {t: frame_prompt(...)}: those
    frames go first, without memory; then each frame from the first prompted one on. correct
    {t: fn(low_res) -> (points (B, 1, 2), labels (B, 1))}: `clicks` more passes on frame t, each
    with the click fn gives and the previous mask; t then conditions later frames (Meta's
    _iter_correct_pt_sampling, add_all_frames_to_correct_as_cond). Memories are encoded from the
    final logits upscaled to image_size (as the predictor does for a mask prompt), and kept in
    bf16 in eval mode as the predictor keeps them: its masks and these are the same.
    """
    from sam2.utils.misc import concat_points

    correct, s = correct or {}, sam.image_size
    bank = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    order = [*prompts, *(t for t in range(min(prompts), num_frames) if t not in prompts)]
    keep = max(sam.max_obj_ptrs_in_encoder, sam.num_maskmem * sam.memory_temporal_stride_for_eval)
    pos = None
    for t in order:
        f = frame(t)
        levels = [*f.high_res, f.image_embed]
        sizes = [tuple(x.shape[-2:]) for x in levels]
        feats = [x.expand(n_obj, -1, -1, -1).flatten(2).permute(2, 0, 1) for x in levels]
        if pos is None:  # the same for every frame: it depends on the map's size only
            pos = sam.image_encoder.neck.position_encoding(f.image_embed).to(f.image_embed.dtype)
            pos = pos.expand(n_obj, -1, -1, -1).flatten(2).permute(2, 0, 1)
        p, first = prompts.get(t, {}), t in prompts
        points = p if "point_coords" in p else None
        _, heads, high_res, pix = sam._track_step(
            t, first, feats, [pos], sizes, points, p.get("mask"), bank, num_frames, False, None
        )
        passes = [heads]
        for _ in range(clicks if t in correct else 0):
            xy, lab = correct[t](heads[3])
            points = concat_points(points, xy, lab)
            multi = sam._use_multimask(first, points)
            heads = sam._forward_sam_heads(pix, points, heads[3], high_res, multi)
            passes.append(heads)
        low_res, obj_ptr, obj_score = heads[3], heads[5], heads[6]
        mask = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        mem, mem_pos = sam._encode_new_memory(feats, sizes, mask, obj_score, points is not None)
        key = "cond_frame_outputs" if first or t in correct else "non_cond_frame_outputs"
        bank[key][t] = {
            "pred_masks": low_res,
            "obj_ptr": obj_ptr,
            "maskmem_features": mem if sam.training else mem.to(torch.bfloat16),
            "maskmem_pos_enc": mem_pos,
        }
        bank["non_cond_frame_outputs"].pop(t - keep, None)  # no later frame reads it
        yield t, [(h[0], h[2], h[6]) for h in passes], low_res


# ----------------------------------------------------------------------------- LoRA, partial trunk
#
# LoRA adapters (peft) on the attention layers of the last blocks of the Hiera trunk. The blocks
# before the first adapted one never change, so their output can be cached once per image
# (encode_until) and each step runs only the adapted blocks and the neck (encode_from).
# SAM 2's trunk: patch embedding + position embedding, then blocks grouped in stages (each
# stage's last block, trunk.stage_ends, gives one map: stage i -> neck level i, level 0 the
# highest resolution). The neck (FpnNeck) turns each map into d_model channels with a lateral
# 1x1 conv and adds the upsampled lower-resolution level on its fpn_top_down_levels; the image
# encoder drops its `scalp` lowest-resolution levels and forward_image projects levels 0 and 1
# with the decoder's conv_s0/conv_s1.

LORA_TARGETS = ("qkv", "proj")  # the Linear layers of a block's attention that may be adapted


def _lora_layers(sam) -> list[tuple[int, str, torch.nn.Module]]:
    """(trunk block index, SAM 2's name of the layer, peft's LoRA layer) of each adapted layer."""
    found = []
    trunk = getattr(getattr(sam, "image_encoder", None), "trunk", None)  # None: not SAM 2
    for i, blk in enumerate(trunk.blocks if trunk is not None else []):
        for name in LORA_TARGETS:
            layer = getattr(blk.attn, name)
            if hasattr(layer, "lora_A"):
                found.append((i, f"image_encoder.trunk.blocks.{i}.attn.{name}", layer))
    return found


def lora_first_block(sam) -> int | None:
    """Index of the first trunk block with adapters (the block encode_until stops before), or
    None without LoRA."""
    return min((i for i, _, _ in _lora_layers(sam)), default=None)


def add_lora(
    sam,
    rank: int,
    blocks: int,
    targets: tuple[str, ...] = ("qkv",),
    alpha: float | None = None,
    dropout: float = 0.0,
) -> list[torch.nn.Parameter]:
    """Put peft LoRA adapters (LoraConfig + inject_adapter_in_model on sam.image_encoder) on the
    attention `targets` ("qkv", "proj") of the last `blocks` trunk blocks; rank 0 adds nothing.

    alpha: peft's lora_alpha (scaling alpha / rank), default rank (scaling 1); dropout: peft's
    lora_dropout. The adapters start at zero (peft's init: lora_B = 0), so the model's outputs
    are exactly those before. Freezes the rest of the image encoder (the decoder and prompt
    encoder keep their flags): call it after freeze_for_finetune / freeze_for_video, whose
    requires_grad_(False) would freeze the adapters too. Module names stay SAM 2's, each
    adapted Linear becomes peft's wrapper (its weights under `.base_layer.`): merge_lora and
    base_state give SAM 2's own keys. Returns the adapter parameters (for the optimizer).
    """
    trunk = sam.image_encoder.trunk
    depth = len(trunk.blocks)
    if rank == 0:
        return []
    if _lora_layers(sam):
        raise ValueError("add_lora: this model has LoRA adapters already")
    if not 1 <= blocks <= depth:
        raise ValueError(f"LoRA blocks must be 1..{depth} (this trunk's blocks), got {blocks}")
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise ValueError(f"LoRA targets must be among {', '.join(LORA_TARGETS)}, got {targets}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    first = depth - blocks
    layers = {
        f"trunk.blocks.{i}.attn.{t}": getattr(trunk.blocks[i].attn, t)
        for i in range(first, depth)
        for t in targets
    }
    # beyond min(in, out) features an adapter is no longer low rank: only memory and time
    limit = min(min(layer.weight.shape) for layer in layers.values())
    if not 1 <= rank <= limit:
        raise ValueError(
            f"LoRA rank must be 1..{limit} (the adapted layers' smallest width), got {rank}"
        )
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(layers),
    )
    inject_adapter_in_model(config, sam.image_encoder)
    sam.image_encoder.requires_grad_(False)
    params = [p for n, p in sam.image_encoder.named_parameters() if ".lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def _own_state(sam, merge: bool) -> dict[str, torch.Tensor]:
    sd = sam.state_dict()
    out = {k.replace(".base_layer.", "."): v for k, v in sd.items() if ".lora_" not in k}
    if not merge:
        return out
    for _, name, layer in _lora_layers(sam):
        if layer.merged:  # peft merged it in place already: its base weight holds the delta
            continue
        with torch.no_grad():
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
        key = name + ".weight"
        out[key] = out[key] + delta.to(out[key].dtype)
    return out


def merge_lora(sam) -> dict[str, torch.Tensor]:
    """SAM 2's own state dict with the adapters merged in (peft's merge: W + B A * scaling), the
    model left as it is: what model.pt / best.pt hold (build_sam2 loads it strictly). Without
    LoRA, sam.state_dict()."""
    return _own_state(sam, merge=True)


def base_state(sam) -> dict[str, torch.Tensor]:
    """SAM 2's own state dict with the adapters NOT merged (the frozen base weights of the adapted
    layers): with adapter_state, what checkpoint.pt holds so that a resume is bit for bit."""
    return _own_state(sam, merge=False)


def adapter_state(sam) -> dict[str, torch.Tensor]:
    """The adapters' tensors only, under their sam.state_dict() keys
    (image_encoder.trunk.blocks.{i}.attn.{qkv,proj}.lora_{A,B}.default.weight)."""
    return {k: v for k, v in sam.state_dict().items() if ".lora_" in k}


def load_lora_state(sam, base: dict, adapters: dict, what: str) -> None:
    """Load base_state + adapter_state (as saved) into a model given the same add_lora; raise
    CheckpointError naming `what` unless they hold exactly its tensors in their shapes."""
    own = {k.replace(".base_layer.", "."): k for k in sam.state_dict() if ".lora_" not in k}
    sd = {own.get(k, k): v for k, v in base.items()}
    clash = sorted(set(sd) & set(adapters))
    if clash:
        raise CheckpointError(f"{what} holds {clash[0]} twice")
    sd.update(adapters)
    check_fits(sam, sd, what)
    sam.load_state_dict(sd)


@dataclass
class TrunkCut:
    """The image encoder of B images run up to trunk block `first_block` (encode_until): what
    encode_from needs to finish it.

    act: (B, H, W, C) the activation entering block first_block (channels-last, as Hiera runs).
    maps: neck level -> (B, C, h, w) for the levels whose stage ended before the cut and that
    `act` is not: the lateral conv's output (d_model channels) where the neck adds a lower
    level to it or it feeds one, else the level's finished map (after conv_s0/conv_s1).
    """

    act: torch.Tensor
    maps: dict[int, torch.Tensor]
    first_block: int

    def __len__(self) -> int:
        return self.act.shape[0]

    def _apply(self, fn) -> TrunkCut:
        return TrunkCut(fn(self.act), {k: fn(v) for k, v in self.maps.items()}, self.first_block)

    def index(self, idx: torch.Tensor | list[int]) -> TrunkCut:
        return self._apply(lambda t: t[idx])

    def to(self, device=None, dtype=None, non_blocking: bool = False) -> TrunkCut:
        return self._apply(lambda t: t.to(device=device, dtype=dtype, non_blocking=non_blocking))

    def pin_memory(self) -> TrunkCut:
        return self._apply(lambda t: t.pin_memory())

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.act, *self.maps.values()))

    @staticmethod
    def cat(parts: list[TrunkCut]) -> TrunkCut:
        return TrunkCut(
            torch.cat([p.act for p in parts]),
            {k: torch.cat([p.maps[k] for p in parts]) for k in parts[0].maps},
            parts[0].first_block,
        )


def _cut_plan(sam, first_block: int) -> dict[int, str]:
    """Neck level -> "lateral" or "final": what encode_until keeps of each stage that ended
    before the cut (the stage ending right before it is `act` itself)."""
    enc = sam.image_encoder
    trunk, neck = enc.trunk, enc.neck
    if not trunk.return_interm_layers:
        raise ValueError("a partial trunk needs Hiera's per-stage outputs (return_interm_layers)")
    depth = len(trunk.blocks)
    if not 0 <= first_block <= depth:
        raise ValueError(f"first_block must be 0..{depth} (this trunk's blocks), got {first_block}")
    levels = len(neck.convs)
    kept = levels - enc.scalp
    used = range(kept - sam.num_feature_levels, kept)
    down = set(neck.fpn_top_down_levels)
    plan = {}
    for i, end in enumerate(trunk.stage_ends):
        if end >= first_block - 1:
            break
        if i in down or i - 1 in down:  # the neck adds levels here: finish it in encode_from
            plan[i] = "lateral"
        elif i in used:
            plan[i] = "final"
    return plan


def _projection(sam, level: int) -> torch.nn.Module | None:
    """forward_image's conv_s0/conv_s1 on neck levels 0/1 (None on other levels)."""
    if sam.use_high_res_features_in_sam and level < 2:
        return sam.sam_mask_decoder.conv_s0 if level == 0 else sam.sam_mask_decoder.conv_s1
    return None


def _project(sam, level: int, x: torch.Tensor) -> torch.Tensor:
    conv = _projection(sam, level)
    return x if conv is None else conv(x)


def encode_until(sam, images: list[np.ndarray] | torch.Tensor, first_block: int) -> TrunkCut:
    """Run the trunk on B images (as encode_images takes them) up to, not including, block
    `first_block` (0..len(blocks)), and keep what encode_from needs. Run it under no_grad for a
    cache: nothing before the first adapted block trains (the cut may not pass it)."""
    first_lora = lora_first_block(sam)
    if first_lora is not None and first_block > first_lora:
        raise ValueError(f"first_block {first_block} is past the first adapted block {first_lora}")
    plan = _cut_plan(sam, first_block)
    trunk, neck = sam.image_encoder.trunk, sam.image_encoder.neck
    n = len(neck.convs) - 1
    device = next(sam.parameters()).device
    x = images if torch.is_tensor(images) else preprocess(images, sam.image_size, device)
    x = trunk.patch_embed(x)  # (B, H, W, C), as Hiera.forward
    x = x + trunk._get_pos_embed(x.shape[1:3])
    maps = {}
    for i in range(first_block):
        x = trunk.blocks[i](x)
        level = trunk.stage_ends.index(i) if i in trunk.stage_ends else None
        if level in plan:
            lateral = neck.convs[n - level](x.permute(0, 3, 1, 2))
            maps[level] = lateral if plan[level] == "lateral" else _project(sam, level, lateral)
    return TrunkCut(x, maps, first_block)


def encode_from(sam, cut: TrunkCut, video: bool = False) -> Features:
    """Finish encode_until's cut: the remaining trunk blocks and the neck. Returns the Features
    encode_images gives for the same images (encode_frames' when `video`: no no-memory
    embedding); grad flows into the adapters."""
    enc, plan = sam.image_encoder, _cut_plan(sam, cut.first_block)
    trunk, neck = enc.trunk, enc.neck
    n = len(neck.convs) - 1
    raw = {}  # level -> (B, C, H, W) stage output computed here
    x = cut.act
    if cut.first_block - 1 in trunk.stage_ends:
        raw[trunk.stage_ends.index(cut.first_block - 1)] = x.permute(0, 3, 1, 2)
    for i in range(cut.first_block, len(trunk.blocks)):
        x = trunk.blocks[i](x)
        if i in trunk.stage_ends:
            raw[trunk.stage_ends.index(i)] = x.permute(0, 3, 1, 2)
    # FpnNeck.forward, from the lowest resolution up, on cached or fresh lateral maps
    out, prev = [None] * (n + 1), None
    for i in range(n, -1, -1):
        if plan.get(i) == "final":
            out[i], prev = cut.maps[i], None
            continue
        if i not in raw and i not in plan:  # ended before the cut, read by no output
            prev = None
            continue
        lateral = cut.maps[i] if plan.get(i) == "lateral" else neck.convs[n - i](raw[i])
        if i in neck.fpn_top_down_levels and prev is not None:
            top_down = F.interpolate(
                prev.to(dtype=torch.float32),
                scale_factor=2.0,
                mode=neck.fpn_interp_model,
                align_corners=None if neck.fpn_interp_model == "nearest" else False,
                antialias=False,
            )
            prev = lateral + top_down
            if neck.fuse_type == "avg":
                prev /= 2
        else:
            prev = lateral
        out[i] = _project(sam, i, prev)
    maps = out[: len(out) - enc.scalp][-sam.num_feature_levels :]
    embed = maps[-1]
    if sam.directly_add_no_mem_embed and not video:
        embed = embed + sam.no_mem_embed.view(1, -1, 1, 1)
    return Features(embed, list(maps[:-1]))


def cut_bytes(sam, first_block: int, dtype: torch.dtype = torch.float32, size=None) -> int:
    """Bytes encode_until keeps per image at `first_block`, from the shapes alone (image side
    `size`, default sam.image_size; elements of `dtype`)."""
    plan = _cut_plan(sam, first_block)
    trunk, neck = sam.image_encoder.trunk, sam.image_encoder.neck
    conv = trunk.patch_embed.proj
    side = (size or sam.image_size) + 2 * conv.padding[0] - conv.kernel_size[0]
    side = side // conv.stride[0] + 1
    channels = conv.out_channels
    elements = 0
    for i in range(first_block):
        blk = trunk.blocks[i]
        side = side // blk.q_stride[0] if blk.q_stride else side
        channels = blk.dim_out
        level = trunk.stage_ends.index(i) if i in trunk.stage_ends else None
        if level in plan:
            width = neck.d_model
            if plan[level] == "final" and (conv := _projection(sam, level)) is not None:
                width = conv.out_channels
            elements += width * side * side
    elements += channels * side * side
    return elements * torch.empty(0, dtype=dtype).element_size()
