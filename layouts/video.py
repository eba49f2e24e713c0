"""Videos for --recipe video: DAVIS 2017 (ROOT/JPEGImages[/480p]/<video>/00000.jpg +
ROOT/Annotations[/480p]/<video>/00000.png, split by ROOT/ImageSets/2017/{train,val}.txt),
YouTube-VOS and MOSE (the same under ROOT/train/ and ROOT/valid/; a valid/ annotated on first
frames only cannot be scored). Otherwise 20% of the videos by name hash are validation. Label
PNGs hold object ids (0 background, 255 void); a frame without one has no ground truth
(YouTube-VOS: every 5th has)."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layouts.base import Layout, Parts, Record, check_record, images_in, norm_split, some
from layouts.labels import label_map
from plumbing.files import DataError, read_lines
from plumbing.images import colour_keys, decode_label, read_image
from plumbing.intensity import DEFAULT_RULE, PixelRule

VOID = 255
VIDEO_DIRS = ("JPEGImages", "Annotations")


@dataclass
class Video:
    """One video: its frames in order and the label PNG of each (None: not annotated).
    orphans: label PNGs whose frame image is missing (not used); colours: the video's colour
    table, built when a colour (RGB) label PNG of it is first read (see video_labels)."""

    name: str
    frames: list[Path]
    labels: list[Path | None]
    orphans: list[Path] = field(default_factory=list)
    colours: np.ndarray | None = field(default=None, repr=False, compare=False)
    rule: PixelRule = DEFAULT_RULE  # how its frames' pixels become RGB (read_frame)


def read_frame(video: Video, t: int) -> np.ndarray:
    """Frame t of a video (H, W, 3) uint8 RGB, by the video's pixel rule (a 16-bit time-lapse
    gets the same --normalize / --channels as still images)."""
    return read_image(video.frames[t], video.rule)


def _has_videos(root: Path) -> bool:
    """JPEGImages/ holds a folder per video (Pascal VOC's JPEGImages/ + Annotations/ hold files)."""
    frames = root / VIDEO_DIRS[0]
    return (
        (root / VIDEO_DIRS[1]).is_dir()
        and frames.is_dir()
        and any(p.is_dir() for p in frames.iterdir())
    )


def _video_parts(root: Path) -> list[tuple[Path, Path, str | None]]:
    """(frames folder, annotations folder, split or None) of each part of a video dataset."""
    if _has_videos(root):
        level = next(
            (n for n in ("480p", "Full-Resolution") if (root / VIDEO_DIRS[0] / n).is_dir()), ""
        )
        return [(root / VIDEO_DIRS[0] / level, root / VIDEO_DIRS[1] / level, None)]
    return [
        (root / d / VIDEO_DIRS[0], root / d / VIDEO_DIRS[1], s)
        for d, s in (("train", "train"), ("valid", "test"), ("val", "test"))
        if _has_videos(root / d)
    ]


def _videos_in(frames_dir: Path, ann_dir: Path) -> list[Video]:
    def order(p: Path):  # 5.jpg before 10.jpg, like SAM 2's frame loader
        return (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name)

    out = []
    for d in sorted(p for p in frames_dir.iterdir() if p.is_dir()):
        frames = sorted(images_in(d), key=order)
        anns = {p.stem: p for p in images_in(ann_dir / d.name) if p.suffix.lower() == ".png"}
        stems = {f.stem for f in frames}
        orphans = [p for s, p in sorted(anns.items()) if s not in stems]
        out.append(Video(d.name, frames, [anns.get(f.stem) for f in frames], orphans))
    return out


def _videos_only(root: Path) -> Parts:
    raise DataError(f"{root} holds videos: train on them with --recipe video")


def find_videos(root: str | Path, split: str = "train") -> tuple[list[Video], str]:
    """The videos of one split ('train', 'test'/'val' or 'all') and how the split was made; a
    split list's names with no video folder are named in a warning."""
    root, split = Path(root), norm_split(split)
    parts = [(_videos_in(f, a), s, f) for f, a, s in _video_parts(root)]
    if not parts:
        raise DataError(f"{root}: no video layout (JPEGImages/ + Annotations/) found")
    lists = sorted((root / "ImageSets").glob("*/train.txt"))
    if lists and parts[0][1] is None:
        videos, keep = parts[0][0], {}
        found = {v.name for v in videos}
        for s, f in (("train", "train.txt"), ("test", "val.txt")):
            path = lists[-1].with_name(f)
            names = [n for line in read_lines(path) for n in line.split()] if path.is_file() else []
            keep[s] = set(names)
            missing = [n for n in names if n not in found]
            if missing and split in (s, "all"):
                warnings.warn(
                    f"{path}: {len(missing)} listed video(s) not in {parts[0][2]}, not used: "
                    f"{some(missing)}",
                    stacklevel=2,
                )
        how = f"split lists {lists[-1].parent.relative_to(root)}/"
        return [v for v in videos if split == "all" or v.name in keep[split]], how
    scorable = any(
        s == "test" and sum(a is not None for a in v.labels) > 1 for vs, s, _ in parts for v in vs
    )
    if scorable:
        return [v for vs, s, _ in parts for v in vs if split in (s, "all")], "train/ and valid/"
    videos = [v for vs, s, _ in parts if s != "test" for v in vs]
    order = sorted(videos, key=lambda v: hashlib.md5(v.name.encode()).hexdigest())
    test = {v.name for v in order[: max(1, round(0.2 * len(videos))) if len(videos) > 1 else 0]}
    chosen = [v for v in videos if split == "all" or (v.name in test) == (split == "test")]
    how = "80% train / 20% validation by name hash"
    return chosen, how + (" (valid/ has first-frame annotations only)" if len(parts) > 1 else "")


def check_video(video: Video) -> tuple[Video, list[str]]:
    """The video without its bad frames (check_record on the frame and its annotation, if it
    has one), and why each was dropped, annotations whose frame image is missing included."""
    good, bad = [], []
    for f, a in zip(video.frames, video.labels):
        why = check_record(Record(f, a, VIDEO.name))
        (bad if why else good).append(why or (f, a))
    bad += [f"{a}: video {video.name}, frame {a.stem}: its image is missing" for a in video.orphans]
    kept = Video(video.name, [f for f, _ in good], [a for _, a in good], rule=video.rule)
    return kept, bad


def load_videos(
    root: str | Path, split: str = "train", rule: PixelRule | tuple[str, str] | None = None
) -> list[Video]:
    """find_videos with bad frames dropped, and videos without an annotated frame showing an
    object skipped, each with a warning naming it; DataError if no video is left. Training and
    evaluation start a video at its first frame with an object (first_object_frame). rule: the
    pixel rule of every frame (a PixelRule or its two strings, normalize and channels)."""
    if rule is not None and not isinstance(rule, PixelRule):
        rule = PixelRule.parse(*rule)
    out = []
    for v in find_videos(root, split)[0]:
        v.rule = rule or DEFAULT_RULE
        v, bad = check_video(v)
        for why in bad:
            warnings.warn(f"skipping frame: {why}", stacklevel=2)
        if not any(v.labels):
            warnings.warn(f"skipping video {v.name}: no readable annotated frame", stacklevel=2)
        elif first_object_frame(v) is None:
            warnings.warn(
                f"skipping video {v.name}: no annotated frame shows an object", stacklevel=2
            )
        else:
            out.append(v)
    if not out:
        raise DataError(f"{root}: no usable video in split '{split}'")
    return out


def object_ids(labels: np.ndarray) -> np.ndarray:
    """The object ids a label map shows (not 0, not VOID), sorted."""
    return np.setdiff1d(labels, [0, VOID])


def first_object_frame(video: Video) -> int | None:
    """The first annotated frame that shows an object (Meta's sampler starts clips only on
    such frames), None if none does; reads the labels up to it."""
    shows = (t for t, a in enumerate(video.labels) if a and len(object_ids(video_labels(video, t))))
    return next(shows, None)


def _colour_table(video: Video) -> np.ndarray:
    """The video's colour table: the sorted colour keys (colour_keys) of all its colour label
    PNGs, black left out; read once, then kept on the video."""
    if video.colours is None:
        keys = [np.zeros(0, np.int64)]
        for a in video.labels:
            if a is not None and (lab := decode_label(a)).ndim == 3:
                keys.append(np.unique(colour_keys(lab[..., :3])))
        table = np.setdiff1d(np.concatenate(keys), [0])
        if len(table) > np.iinfo(np.uint16).max - 2:  # ids are uint16, VOID skipped
            raise DataError(f"video {video.name}: {len(table)} colours in its label PNGs")
        video.colours = table
    return video.colours


def video_labels(video: Video, t: int) -> np.ndarray | None:
    """Frame t's object ids (H, W) uint16 (0 background, VOID ignored), None if not annotated.

    Colour (RGB) label PNGs: black is background, each other colour one object whose id is its
    rank in the video's colour table (1, 2, ...; VOID skipped), so the same in every frame.
    """
    path = video.labels[t]
    if path is None:
        return None
    lab = decode_label(path)
    if lab.ndim == 2:
        return lab.astype(np.uint16)
    table = _colour_table(video)
    keys, inverse = np.unique(colour_keys(lab[..., :3]), return_inverse=True)
    if not np.isin(keys[keys != 0], table).all():  # the file changed after the table was read
        raise DataError(f"{path}: colours not in video {video.name}'s other label PNGs")
    ids = np.where(keys == 0, 0, np.searchsorted(table, keys) + 1)
    ids += ids >= VOID
    return ids[inverse].reshape(lab.shape[:2]).astype(np.uint16)


def summarize_videos(root: str | Path) -> tuple[str, int]:
    """`python data.py` for a video dataset: the split, and per split the videos, frames (with
    ground truth), objects per video, every skipped frame and video, and the videos that start
    after an empty annotated frame; and the number of usable training videos (as load_videos:
    an annotated frame shows an object)."""
    lines, skipped, dropped, notes, usable = [f"data:    {root} (video layout)"], [], [], [], 0
    for split in ("train", "test"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            videos, how = find_videos(root, split)
        notes += [f"warning: {w.message}" for w in caught]
        objects, frames, annotated, late = [], 0, 0, []
        for v in videos:
            v, bad = check_video(v)
            skipped += [f"  {why}" for why in bad]
            ids, shows = set(), []
            for t in range(len(v.frames)):
                if (lab := video_labels(v, t)) is not None:
                    shows.append(len(found := object_ids(lab)) > 0)
                    ids |= set(found.tolist())
            objects.append(len(ids))
            if not shows:
                dropped.append(f"  {v.name}: no readable annotated frame")
            elif not any(shows):
                dropped.append(f"  {v.name}: no annotated frame shows an object")
            else:
                usable += split == "train"
                late += [] if shows[0] else [v.name]
            frames, annotated = frames + len(v.frames), annotated + len(shows)
        o = np.array(objects or [0])
        lines.append(
            f"{split + ':':8} {len(videos)} videos, {frames} frames ({annotated} annotated), "
            f"objects per video min {o.min()} / mean {o.mean():.1f} / max {o.max()}"
        )
        if late:
            lines.append(
                f"{'':8} {len(late)} start at their first frame with an object (the first "
                f"annotated one shows none): {some(late)}"
            )
    lines.insert(1, f"split:   {how}")
    lines += notes + [f"skipped: {len(skipped)} frames", *skipped]
    if dropped:
        lines += [f"skipped: {len(dropped)} videos", *dropped]
    return "\n".join(lines), usable


VIDEO = Layout(
    "video",
    "ROOT/JPEGImages/<video>/00000.jpg + ROOT/Annotations/<video>/00000.png (DAVIS; "
    "YouTube-VOS, MOSE: under ROOT/train/ and ROOT/valid/), for --recipe video",
    lambda r: bool(_video_parts(r)),
    lambda r, opts: _videos_only(r),
    # a frame's record: its label PNG (object ids) when it has one
    label_map=label_map,
    checks=lambda r: r.annotation is not None,
    ann_size=True,
    summary=summarize_videos,
)
