"""LoRA in a run (issue 27): the adapters a Config asks for, the cached trunk cut finished into
features where a step or an evaluation needs them, and model.pt's merged weights rebuilt from
checkpoint.pt's unmerged ones. The adapters themselves, the cut and the merge are model.py's
(add_lora, encode_until / encode_from, merge_lora)."""

from __future__ import annotations

import torch

from model import Features, TrunkCut, add_lora, encode_from

ADAPTER = ".lora_"  # in the state-dict keys of peft's adapter tensors


def finish(sam, feats: Features | TrunkCut, video: bool = False) -> Features:
    """The decoder's Features: `feats` itself, or a cached TrunkCut run through the adapted
    blocks and the neck (model.encode_from; grad flows into the adapters where enabled).
    video: encode_frames' features (no no-memory embedding)."""
    return encode_from(sam, feats, video) if isinstance(feats, TrunkCut) else feats


def add_adapters(sam, params: list, lora: dict) -> list:
    """Put the adapters `lora` asks for (rank, blocks, targets, alpha, dropout: the Config's
    lora_* values without the prefix; rank 0: none) on `sam` after a recipe froze it, and add
    them to the optimizer's `params`: a list of tensors, or of param groups (the adapters join
    the first, weight-decayed, group). Returns the new params."""
    adapters = add_lora(sam, **lora)
    if not adapters:
        return params
    if params and isinstance(params[0], dict):
        return [{**params[0], "params": [*params[0]["params"], *adapters]}, *params[1:]]
    return [*params, *adapters]


def lora_settings(config: dict) -> dict:
    """add_lora's arguments from a Config (as a dict, as checkpoints hold it)."""
    targets = tuple(t.strip() for t in config.get("lora_targets", "qkv").split(",") if t.strip())
    return dict(
        rank=config.get("lora_rank", 0),
        blocks=config.get("lora_blocks", 2),
        targets=targets,
        alpha=config.get("lora_alpha"),
        dropout=config.get("lora_dropout", 0.0),
    )


def merged_weights(base: dict, adapters: dict, config: dict) -> dict[str, torch.Tensor]:
    """SAM 2's own weights with the adapters merged (W + B A x alpha / rank, peft's merge of a
    Linear layer), from checkpoint.pt's unmerged `base` and `adapters` and its `config`: what
    merge_lora gives for the live model. Without adapters, `base`."""
    if not adapters:
        return base
    lora = lora_settings(config)
    scaling = (lora["alpha"] or lora["rank"]) / lora["rank"]
    out = dict(base)
    for key, a in adapters.items():
        if ".lora_A." not in key:
            continue
        layer = key.split(".lora_A.")[0]
        b = adapters[key.replace(".lora_A.", ".lora_B.")]
        w = out[layer + ".weight"]
        out[layer + ".weight"] = w + (b.float() @ a.float() * scaling).to(w.dtype)
    return out
