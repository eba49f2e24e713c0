"""A run's folder and its files: the lock on --out, the rules of --resume, the one dict that
model.pt / best.pt hold, and saves that leave every previous file intact when they fail."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

from model import CheckpointError, adapter_state, base_state, load_tensors, merge_lora
from plumbing.cli import as_flag, flag
from plumbing.files import write_atomic, write_part
from plumbing.lora import merged_weights


def claim_out(out: Path, resume: bool):
    """Create --out and lock it for this run (a second run on it refuses at once; the kernel
    drops the lock when this process ends, however it ends). Returns the open lock file."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / ".lock", "a+")
    except OSError as e:
        raise SystemExit(
            f"error: --out {out} is not a writable folder ({e.strerror or e})"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise SystemExit(
            f"error: {out} is in use by another train.py (pid {lock.read().strip() or '?'}): "
            "wait for it to end, or choose another --out"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    for part in out.glob("*.part"):  # left by a run killed mid-save; nobody else writes here
        warnings.warn(f"removing {part}, a half-written file from an interrupted save")
        part.unlink()
    if (out / "checkpoint.pt").exists() and not resume:
        raise SystemExit(
            f"error: {out / 'checkpoint.pt'} exists: pass --resume to continue that run, or "
            "choose another --out (nothing was overwritten)"
        )
    return lock


# What --resume may change: how long, how often and on what hardware the same training goes
# on. Every other Config field must equal the checkpoint's, so a field added later is refused
# until it is listed here; IGNORED ones only say how this process was started.
RESUME_MAY_CHANGE = {"steps", "minutes", "lr", "weight_decay", "save_every", "eval_every"}
RESUME_MAY_CHANGE |= {"log_every", "device", "workers", "cache", "encode_batch"}
RESUME_MAY_CHANGE |= {"lr_schedule", "clip_grad"}  # optimizer settings, read at every step
RESUME_MAY_CHANGE |= {"amg_images"}  # issue 28: what the end of the run scores
RESUME_IGNORES = {"out", "resume", "demo", "ignore_memory"}


def resume_changes(saved: dict, cfg) -> tuple[list[tuple], list[tuple]]:
    """(refused, allowed) lists of (field, checkpoint's value, cfg's value): where `cfg` (a
    dataclass: train.Config) differs from a checkpoint's config `saved` (a field it lacks
    counts as the default)."""
    refused, allowed = [], []
    for f in dataclasses.fields(cfg):
        old, new = saved.get(f.name, f.default), getattr(cfg, f.name)
        if f.name in RESUME_IGNORES or old == new:
            continue
        if f.name in ("data", "checkpoint") and None not in (old, new):
            with contextlib.suppress(OSError):  # the same files, named another way
                if os.path.samefile(old, new):
                    continue
        (allowed if f.name in RESUME_MAY_CHANGE else refused).append((f.name, old, new))
    return refused, allowed


def read_checkpoint(path: Path, cfg, say: bool = True) -> dict:
    """checkpoint.pt's contents (read once). Refused (SystemExit naming each difference) when
    `cfg` (a dataclass: train.Config) changes what the run trains; the changes
    RESUME_MAY_CHANGE allows are printed."""
    try:
        ck = load_tensors(path)
        saved = ck["config"]
    except CheckpointError:
        raise
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    refused, allowed = resume_changes(saved, cfg)
    if refused:
        raise SystemExit(
            f"error: --resume cannot change what {path} trains:\n"
            + "".join(
                f"  --{flag(k)}: {old} in the checkpoint, {new} now\n" for k, old, new in refused
            )
            + "To continue that run, give its values ("
            + ", ".join(as_flag(k, old) for k, old, _ in refused)
            + "); to train with the new ones, start a new run with another --out."
        )
    if allowed and say:
        changes = ", ".join(f"--{flag(k)} {old} -> {new}" for k, old, new in allowed)
        print(f"resume: {changes}", file=sys.stderr)
    return ck


WEIGHTS_KEYS = ("model", "model_name", "config", "step")  # model_weights' own keys
# what checkpoint.pt adds ("adapters": LoRA's, unmerged)
RESUME_KEYS = ("optimizer", "scaler", "gen_states", "state", "adapters")


def model_weights(
    weights: dict[str, torch.Tensor],
    model_name: str,
    config: dict,
    step: int,
    extra: dict | None = None,
):
    """What model.pt and best.pt hold: {"model": SAM 2's own state-dict keys -> CPU tensors,
    "model_name", "config" (the run's Config as a dict), "step"}, plus `extra`'s top-level
    entries (e.g. autoseg's trained head under its own key: build_sam2 reads only "model").
    `weights` is SAM 2's state_dict() (or checkpoint.pt's "model"). Refuses (RuntimeError)
    non-finite weights."""
    sd = {k: v.detach().cpu() for k, v in weights.items()}
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"refusing to save non-finite weights at step {step}: {bad[:3]}")
    extra = extra or {}
    if clash := set(extra) & {*WEIGHTS_KEYS, *RESUME_KEYS}:
        raise ValueError(f"model_weights: extra entries may not replace {sorted(clash)}")
    return {"model": sd, "model_name": model_name, "config": config, "step": step, **extra}


def save_atomic(obj, path: Path) -> None:
    """torch.save `obj` to `path`, whole or not at all (plumbing.files.write_atomic)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def match_model_pt(out: Path, ck: dict) -> None:
    """Make model.pt hold checkpoint.pt's step (they differ only after a stop between the
    renames of one save): write it again from checkpoint.pt's weights."""
    path = out / "model.pt"
    try:
        step = load_tensors(path, mmap=True)["step"]
    except Exception:  # missing or unreadable: written again all the same
        step = None
    if step != ck["step"]:
        warnings.warn(f"{path} held step {step}, not checkpoint.pt's {ck['step']}: rewritten")
        extra = {k: v for k, v in ck.items() if k not in (*WEIGHTS_KEYS, *RESUME_KEYS)}
        merged = merged_weights(ck["model"], ck.get("adapters", {}), ck["config"])
        weights = model_weights(merged, ck["model_name"], ck["config"], ck["step"], extra)
        save_atomic(weights, path)


class SaveError(RuntimeError):
    """A checkpoint could not be written (disk full, I/O error, no permission)."""


def os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind `e` (torch.save reports a failed write as a RuntimeError)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def save_failed(path: Path, e: BaseException) -> SaveError:
    """The one-line message of a failed write of `path`: why, free space, what is intact."""
    reason = os_error(e)
    free = shutil.disk_usage(path.parent).free
    free = f"{free / 2**30:.1f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"
    ck = path.parent / "checkpoint.pt"
    kept = (
        f"{ck} from before is intact; make room, then --resume" if ck.exists() else "nothing saved"
    )
    return SaveError(
        f"could not write {path} ({reason.strerror or reason}; {free} free there): {kept}"
    )


def save_checkpoint(
    out: Path,
    sam,
    opt,
    scaler,
    config: dict,
    state: dict,
    gens: list,
    best: bool = False,
    extra: dict | None = None,
) -> None:
    """checkpoint.pt (resumable: model_weights + optimizer, scaler, every rank's generator
    state `gens` and the loop's `state`, whose "step" it is) and model.pt; best.pt too when
    `best`. `config` is the run's Config as a dict ("model" names the SAM 2 size); `extra`:
    more top-level entries of all three files (model_weights). With LoRA, model.pt / best.pt
    hold the merged weights (model.merge_lora: SAM 2's own keys) and checkpoint.pt the unmerged
    ones ("model": base_state, "adapters": adapter_state), so that a resume goes on bit for bit.

    All files are written in full before any is put in place, so a failed write (SaveError,
    naming the file) or a stop leaves every previous file as it was; checkpoint.pt and model.pt
    always hold the same step (match_model_pt repairs a kill between their renames)."""
    weights = model_weights(merge_lora(sam), config["model"], config, state["step"], extra)
    resume = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "gen_states": gens}
    files = {"model.pt": weights, "best.pt": weights} if best else {"model.pt": weights}
    if adapters := adapter_state(sam):
        resume["adapters"] = {k: v.detach().cpu() for k, v in adapters.items()}
        unmerged = model_weights(base_state(sam), config["model"], config, state["step"], extra)
        files["checkpoint.pt"] = {**unmerged, **resume, "state": state}
    else:
        files["checkpoint.pt"] = {**weights, **resume, "state": state}
    parts = {}
    try:
        for name, obj in files.items():
            parts[name] = write_part(out / name, lambda f, obj=obj: torch.save(obj, f))
    except BaseException as e:
        for part in parts.values():
            part.unlink()
        if isinstance(e, (OSError, RuntimeError)) and os_error(e):
            raise save_failed(out / name, e) from None
        raise
    # best.pt first: should a kill fall between these renames, the resumed run redoes that step
    # and writes the same best.pt again (the other way round, it would keep an older best.pt)
    for name in ("best.pt", "checkpoint.pt", "model.pt"):
        if name in parts:
            os.replace(parts[name], out / name)
