"""The one rule that turns a file's pixels (any depth, any number of channels) into the uint8
RGB SAM 2 sees: which channels become R, G, B (--channels) and how values become 0-255
(--normalize). It is named, parsed once, and saved in checkpoint configs as two strings.

    rule = PixelRule.parse("percentile:1,99.8", "1,0,0")
    rgb = to_rgb(raw, rule, path)          # raw (H, W, C) any dtype -> (H, W, 3) uint8
    PixelRule.from_dict(rule.to_dict()) == rule

--normalize:
    auto               8-bit as is; any other depth: per-channel percentiles 1 to 99.8 of the
                       image -> 0-255 (micro-sam's choice of percentiles); a flat channel
                       (no contrast) by its type's range (uint16 65535 -> 255; float 0-1)
    percentile:LO,HI   per-channel percentiles LO to HI of the image -> 0-255 (8-bit too)
    range:MIN,MAX      the fixed values MIN to MAX -> 0-255, so images stay comparable
    none               values taken as 0-255 levels; one outside 0-255 is an error
--channels (empty = default: 1 channel gray, 2 -> R and G, 3 RGB, 4 RGB + alpha dropped,
5 or more: an error asking for --channels):
    "1"      channel 1 repeated to gray
    "1,0"    channel 1 -> R, channel 0 -> G, B black
    "2,1,0"  channels 2, 1, 0 -> R, G, B
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plumbing.files import DataError

AUTO_PERCENTILES = (1.0, 99.8)  # as micro-sam: the darkest 1% and brightest 0.2% saturate
KINDS = ("auto", "percentile", "range", "none")
MAX_CHANNEL = 4096  # an index past this is a typo, not a channel


def _num(v: float) -> str:
    """A number as the shortest text that parses back to it exactly."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _pair(text: str, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--normalize {what}: expected two numbers LO,HI, got {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"--normalize {what}: needs finite LO < HI, got {text!r}")
    return lo, hi


@dataclass(frozen=True)
class PixelRule:
    """How a file's pixels become uint8 RGB.

    kind: "auto", "percentile", "range" or "none"; lo, hi: the percentiles (percentile) or
    values (range) mapped to 0 and 255, unused otherwise; channels: the source channel of R, G,
    B (1 to 3 indices; () = the default for the file's channel count).
    """

    kind: str = "auto"
    lo: float = AUTO_PERCENTILES[0]
    hi: float = AUTO_PERCENTILES[1]
    channels: tuple[int, ...] = ()

    @classmethod
    def parse(cls, normalize: str = "auto", channels: str = "") -> PixelRule:
        """--normalize and --channels text -> a rule; ValueError naming the bad value."""
        text = str(normalize).strip().lower()
        kind, _, args = text.partition(":")
        if kind not in KINDS:
            raise ValueError(
                f"--normalize: unknown rule {normalize!r}; use auto, percentile:LO,HI, "
                "range:MIN,MAX or none"
            )
        if kind in ("auto", "none"):
            if args:
                raise ValueError(f"--normalize {kind} takes no values, got {normalize!r}")
            return cls(kind, *AUTO_PERCENTILES, parse_channels(channels))
        lo, hi = _pair(args, kind)
        if kind == "percentile" and not (0 <= lo and hi <= 100):
            raise ValueError(f"--normalize percentile: needs 0 <= LO < HI <= 100, got {args!r}")
        return cls(kind, lo, hi, parse_channels(channels))

    @property
    def normalize(self) -> str:
        """The --normalize text of this rule (what a checkpoint config saves)."""
        if self.kind in ("auto", "none"):
            return self.kind
        return f"{self.kind}:{_num(self.lo)},{_num(self.hi)}"

    @property
    def channel_text(self) -> str:
        """The --channels text of this rule ("" = default)."""
        return ",".join(map(str, self.channels))

    @property
    def plain(self) -> bool:
        """True when an 8-bit file with 1, 3 or 4 channels is read exactly as cv2 reads it."""
        return self.kind in ("auto", "none") and not self.channels

    def to_dict(self) -> dict[str, str]:
        """{"normalize": str, "channels": str}: the Config fields that save this rule."""
        return {"normalize": self.normalize, "channels": self.channel_text}

    @classmethod
    def from_dict(cls, d: dict) -> PixelRule:
        """A saved rule back; a config from before the rule existed gives the default."""
        return cls.parse(d.get("normalize") or "auto", d.get("channels") or "")

    def __str__(self) -> str:
        what = {
            "auto": f"auto (8-bit as is; other depths: percentiles {_num(self.lo)}-"
            f"{_num(self.hi)} per channel -> 0-255)",
            "percentile": f"percentiles {_num(self.lo)}-{_num(self.hi)} per channel -> 0-255",
            "range": f"values {_num(self.lo)}-{_num(self.hi)} -> 0-255",
            "none": "none (values taken as 0-255)",
        }[self.kind]
        return f"normalize {what}, channels {self.channel_text or 'default'}"


DEFAULT_RULE = PixelRule()


def parse_channels(text: str) -> tuple[int, ...]:
    """--channels "1,0,0" -> (1, 0, 0); "" -> () (the default); ValueError naming the value."""
    text = str(text).strip()
    if not text:
        return ()
    parts = [p.strip() for p in text.split(",")]
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(
            f"--channels: expected 1 to 3 channel indices (0-based) separated by commas, "
            f"e.g. 1,0,0; got {text!r}"
        )
    idx = tuple(int(p) for p in parts)
    if max(idx) > MAX_CHANNEL:
        raise ValueError(f"--channels: index {max(idx)} is past {MAX_CHANNEL}; got {text!r}")
    return idx


def source_channels(n: int, rule: PixelRule, name: str | Path) -> tuple[int | None, ...]:
    """The file channel feeding R, G, B (None = black) for a file of n channels; DataError
    naming the file when --channels asks for a channel it lacks or n > 4 without --channels."""
    ch = rule.channels
    if not ch:
        if n > 4:
            raise DataError(
                f"{name}: has {n} channels; choose which become R, G, B with --channels "
                f"(e.g. --channels 0,1,2)"
            )
        ch = {1: (0,), 2: (0, 1)}.get(n, (0, 1, 2))  # 4: alpha dropped, as cv2 does
    if max(ch) >= n:
        raise DataError(
            f"{name}: --channels {rule.channel_text} asks for channel {max(ch)} but the file "
            f"has {n} channel{'s' * (n != 1)} (0-{n - 1})"
        )
    if len(ch) == 1:
        return ch * 3
    return tuple(ch) + (None,) * (3 - len(ch))


def _percentiles(x: np.ndarray, qs: tuple[float, float]) -> tuple[float, float]:
    """np.percentile(x, qs) (linear, as micro-sam's) of the finite values; (nan, nan) if none."""
    f = x.ravel()
    if f.dtype.kind == "f":
        f = f[np.isfinite(f)]
    if f.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(f, qs)
    return float(lo), float(hi)


def _scale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) values: lo -> 0, hi -> 255 (lo < hi), rounded and saturated; NaN -> 0."""
    y = (x.astype(np.float32) - np.float32(lo)) * np.float32(255 / (hi - lo))
    y = np.nan_to_num(y, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(y, 0, 255, out=y), out=y).astype(np.uint8)


def to_uint8(x: np.ndarray, rule: PixelRule, name: str | Path) -> np.ndarray:
    """One channel (H, W) of any dtype -> (H, W) uint8 by the rule's normalize."""
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    if rule.kind == "range":
        return _scale(x, rule.lo, rule.hi)
    if x.dtype == np.uint8 and rule.kind in ("auto", "none"):
        return x
    if rule.kind == "none":
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if lo < 0 or hi > 255:
            raise DataError(
                f"{name}: --normalize none needs values 0-255, found {_num(lo)} to {_num(hi)} "
                f"({x.dtype}); use --normalize auto or range:MIN,MAX"
            )
        return np.rint(np.nan_to_num(x, nan=0.0)).astype(np.uint8)
    lo, hi = _percentiles(x, (rule.lo, rule.hi))
    if not hi > lo:  # a flat channel has no contrast to stretch: scale by its type's range
        lo, hi = (np.iinfo(x.dtype).min, np.iinfo(x.dtype).max) if x.dtype.kind in "ui" else (0, 1)
    return _scale(x, lo, hi)


def to_rgb(raw: np.ndarray, rule: PixelRule, name: str | Path = "image") -> np.ndarray:
    """raw (H, W, C) of any dtype (a file's own values) -> (H, W, 3) uint8 RGB by the rule.

    Channels are picked first (source_channels), then each picked channel is scaled on its
    own (percentiles per channel, as micro-sam does for multichannel input). DataError names
    the file when its channels do not fit --channels or --normalize none does not fit it.
    """
    if raw.ndim == 2:
        raw = raw[..., None]
    src = source_channels(raw.shape[2], rule, name)
    done: dict[int, np.ndarray] = {}
    for c in src:
        if c is not None and c not in done:
            done[c] = to_uint8(raw[..., c], rule, name)
    black = np.zeros(raw.shape[:2], np.uint8)
    return np.ascontiguousarray(np.stack([black if c is None else done[c] for c in src], -1))


# ----------------------------------------------------------------------------- what was found


@dataclass(frozen=True)
class PixelInfo:
    """What one image file holds: dtype, channels, size, the range of its values (finite ones)
    and a note (e.g. planes of a stack that were not read)."""

    dtype: str
    channels: int
    height: int
    width: int
    lo: float
    hi: float
    note: str = ""

    @classmethod
    def of(cls, raw: np.ndarray, note: str = "") -> PixelInfo:
        """raw (H, W, C) -> its PixelInfo."""
        if raw.ndim == 2:
            raw = raw[..., None]
        f = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
        lo, hi = (float(f.min()), float(f.max())) if f.size else (float("nan"),) * 2
        return cls(str(raw.dtype), raw.shape[2], raw.shape[0], raw.shape[1], lo, hi, note)


def _range(infos: list[PixelInfo]) -> str:
    lo = [i.lo for i in infos if np.isfinite(i.lo)]
    hi = [i.hi for i in infos if np.isfinite(i.hi)]
    return f"{_num(min(lo))} to {_num(max(hi))}" if lo else "no finite values"


def describe(infos: list[PixelInfo], rule: PixelRule) -> str:
    """One line for a split's images: each dtype found (how many, the range of their values),
    channel counts (how many), the rule applied and how many images it cannot read."""
    if not infos:
        return f"no images; rule: {rule}"
    dtypes = Counter(i.dtype for i in infos)
    chans = Counter(i.channels for i in infos)
    bad = 0
    for i in infos:
        try:
            source_channels(i.channels, rule, "")
        except DataError:
            bad += 1
    text = (
        ", ".join(
            f"{d} x{n} ({_range([i for i in infos if i.dtype == d])})"
            for d, n in dtypes.most_common()
        )
        + "; "
        + ", ".join(f"{c} channel{'s' * (c != 1)} x{n}" for c, n in sorted(chans.items()))
        + f"; rule: {rule}"
    )
    if bad:
        text += f"; {bad} image{'s' * (bad != 1)} whose channels --channels cannot pick"
    return text
