"""COCO: the one reader of COCO JSON files (instances and panoptic; train.py's --data and
infer.py's --gt), the COCO instances layout (CVAT, Roboflow, detectron2, datumaro), and COCO's
masks (polygons, RLE compressed or not) that SA-1B shares."""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from layouts.base import (
    SPLIT_WORDS,
    Layout,
    Options,
    Parts,
    Record,
    capped,
    rel,
    split_dirs,
    word,
)
from plumbing.files import DataError, read_json

# ----------------------------------------------------------------------------- masks


def _rle_length(counts: list[int] | str | bytes) -> int:
    """Pixels an RLE's runs cover (pycocotools' decode() leaves the tail of a short one
    uninitialised, random pixels). A compressed string is read as pycocotools' rleFrString
    reads it: 5 bits a character, 0x20 = more characters follow, 0x10 on the last = negative,
    and from the third run on each stored as the difference to the run two before."""
    if isinstance(counts, list):
        return sum(counts)
    s = counts.encode() if isinstance(counts, str) else counts
    runs, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more and p < len(s):
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more, p, k = bool(c & 0x20), p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        runs.append(x + (runs[-2] if len(runs) > 2 else 0))
    return sum(runs)


def _is_polygon(p) -> bool:
    return isinstance(p, list) and len(p) % 2 == 0 and all(isinstance(v, int | float) for v in p)


def far_off(xy: list[float], h: int, w: int) -> str | None:
    """Why points [x0, y0, x1, y1, ...] cannot be drawn: a coordinate that is not finite or
    lies farther outside the image than its own size (pycocotools allocates per pixel of an
    edge's length: one 1e12 coordinate costs tens of GB). None if they can."""
    for k, v in enumerate(xy):
        side = (w, h)[k % 2]
        if not math.isfinite(v) or not -side <= v <= 2 * side:
            return f"coordinate {v!r:.20} is not finite or far outside the {w}x{h} image"
    return None


def coco_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """One COCO annotation's segmentation (polygons, RLE compressed or not) -> (H, W) bool.
    Raises ValueError (or pycocotools' own errors) saying why there is no usable mask."""
    seg = ann.get("segmentation")
    if not seg:
        raise ValueError("no segmentation (bounding box only)")
    if isinstance(seg, list):
        if not all(map(_is_polygon, seg)):
            raise ValueError("'segmentation' is a list but not of polygons [x0, y0, x1, y1, ...]")
        polys = [p for p in seg if len(p) >= 6]  # under 3 points frPyObjects would read a box
        if not polys:
            raise ValueError("no polygon of 3 or more points")
        for k, p in enumerate(seg):
            if len(p) >= 6 and (why := far_off(p, h, w)):
                raise ValueError(f"polygon {k}: {why}")
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))) > 0
    if not isinstance(seg, dict):
        raise ValueError(f"'segmentation' must be polygons or an RLE, got {type(seg).__name__}")
    if seg.get("size") != [h, w]:
        raise ValueError(f"RLE size {seg.get('size')} != image size [{h}, {w}]")
    counts = seg.get("counts")
    uncompressed = isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
    if not (uncompressed or isinstance(counts, str | bytes)):
        raise ValueError("RLE 'counts' must be a list of run lengths or a compressed string")
    n = _rle_length(counts)
    if n != h * w:
        raise ValueError(f"RLE runs cover {n} pixels, not the image's {h}x{w} = {h * w}")
    # uncompressed (CVAT and datumaro write those) -> compressed, which decode() takes
    return mask_utils.decode(mask_utils.frPyObjects(seg, h, w) if uncompressed else seg) > 0


def rle_instances(anns: list, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """COCO-style annotations (polygons or RLE 'segmentation'), the first MAX_INSTANCES."""
    for a in capped(anns, skipped):
        try:
            m = coco_mask(a, h, w) if isinstance(a, dict) else None
        except Exception as e:  # pycocotools raises bare Exception for unsupported input
            skipped.append(f"annotation id {a.get('id')}: {e}")
            continue
        if m is None:
            skipped.append(f"annotation {a!r:.40}: not an object")
            continue
        yield m


def _coco_instances(record: Record, h: int, w: int, skipped: list[str]) -> Iterator[np.ndarray]:
    """COCO: each annotation kept when the file was read (crowd regions only with --crowd)."""
    return rle_instances(record.coco or [], h, w, skipped)


def crowd_note(records: list[Record]) -> str | None:
    """What became of COCO crowd regions (iscrowd=1), for data.py's summary and train.py."""
    left = [a for r in records for a in r.crowd]
    used = sum(a.get("iscrowd") == 1 for r in records for a in r.coco or [])
    if not left:
        return f"{used} crowd (iscrowd=1) annotations used as instances" if used else None
    # CVAT exports COCO through datumaro, which makes every mask shape a crowd region and
    # writes each shape's 'occluded' flag into the annotation's attributes
    cvat = any("occluded" in a["attributes"] for a in left if isinstance(a.get("attributes"), dict))
    why = (
        "this looks like a CVAT export (CVAT's 'occluded' attributes), and CVAT writes every "
        "mask, brush and AI-tool shape as a crowd region"
        if cvat
        else "a crowd region covers many objects, but CVAT exports write mask shapes so too"
    )
    n_img = sum(bool(r.crowd) for r in records)
    return (
        f"{len(left)} crowd (iscrowd=1) annotations skipped in {n_img} images ({why}: "
        "--crowd-instances makes them instances)"
    )


# ----------------------------------------------------------------------------- finding files


def not_coco(js: Path) -> bool:
    """JSONs that sit where COCO's do but are no COCO: datumaro's own format (it starts with
    its dm_format_version) and Open Images' class hierarchy (bbox_labels_600_hierarchy.json)."""
    if "hierarchy" in js.stem.lower():
        return True
    try:
        with open(js, "rb") as f:
            return b'"dm_format_version"' in f.read(512)
    except OSError:
        return False


def coco_jsons(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = [
        p
        for p in sorted((root / "annotations").glob("*.json")) or sorted(root.glob("*.json"))
        if not not_coco(p)
    ]
    # Roboflow: ROOT/{train,valid,test}/_annotations.coco.json, the images beside each
    found = found or [p for d in split_dirs(root) for p in sorted(d.glob("*.json"))]
    # annotations/ often also holds captions / keypoints files: prefer the instances ones
    inst = [p for p in found if "instances" in p.name.lower()]
    return inst or found


def coco_split(js: Path) -> str | None:
    """'train' / 'val' / 'test' from the split words in a COCO file's name (None if none or
    several), else from its folder's name (Roboflow's train/, valid/, test/)."""
    tags = {SPLIT_WORDS[w] for w in re.findall(r"[a-z]+", js.stem.lower()) if w in SPLIT_WORDS}
    return tags.pop() if len(tags) == 1 else None if tags else word(js.parent)


def _coco_image_dirs(js: Path) -> list[Path]:
    """Where a COCO file's images may be: beside it, in images/ or images/<subset>/ (datumaro
    and CVAT: annotations/instances_<subset>.json), the same beside its folder, and for
    annotations/instances_val2017.json also ROOT/val2017/."""
    d, p = js.parent, js.parent.parent
    subset = js.stem.split("_", 1)[-1]
    dirs = [d, d / "images", d / "images" / subset, p, p / "images", p / "images" / subset]
    if d.name == "annotations":
        dirs += sorted(c for c in p.iterdir() if c.is_dir() and c.name in js.stem)
    return list(dict.fromkeys(dirs))


def _coco_image(js: Path, name: str) -> tuple[Path, tuple[Path, ...]]:
    """A COCO image's path, and the folders searched when it is in none of them."""
    dirs = _coco_image_dirs(js)
    cands = [d / name for d in dirs]
    path = next((c for c in cands if c.is_file()), None)
    return (path, ()) if path else (cands[0], tuple(dirs))


# ----------------------------------------------------------------------------- reading the JSON


def _size(v) -> int | None:
    """A COCO image's width or height: None when unknown (absent, or 0 as datumaro writes it),
    else a whole number; ValueError otherwise."""
    if v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v == 0):
        return None
    if not (isinstance(v, int | float) and not isinstance(v, bool) and v > 0 and v == int(v)):
        raise ValueError(f"must be a positive integer, got {v!r:.40}")
    return int(v)


def _panoptic(anns: list) -> bool:
    return any(isinstance(a, dict) and "segments_info" in a for a in anns)


def _bad(js: Path, why: str) -> DataError:
    return DataError(f"{js}: not a readable COCO instances JSON: {why}")


def _warn_orphans(js: Path, orphans: list[str]) -> None:
    if orphans:
        warnings.warn(
            f"{js}: skipped {len(orphans)} annotations whose image_id is in no 'images' entry: "
            + ", ".join(orphans[:5])
            + (", ..." if orphans[5:] else ""),
            stacklevel=4,
        )


def index_coco(js: Path) -> COCO:
    """A COCO instances (or panoptic) JSON, checked entry by entry, as pycocotools' COCO
    (indexed quietly): .dataset is the file, .imgs its images by id, .imgToAnns each image's
    annotations in file order (panoptic: its entries). DataError naming the file, the entry and
    what was expected when it is not one; annotations whose image_id is in no 'images' entry
    are left out of the index, with a warning naming them."""
    d = read_json(js, "COCO instances JSON")
    bad = partial(_bad, js)
    if not isinstance(d, dict):
        hint = " (a Label Studio JSON export? export COCO from it)" if isinstance(d, list) else ""
        raise bad(f"it holds a JSON {type(d).__name__}, not an object with 'images'{hint}")
    if "shapes" in d:
        raise bad("it is a labelme file: put each labelme .json beside its image")
    images, anns = d.get("images"), d.get("annotations", [])
    if not isinstance(images, list) or not isinstance(anns, list):
        raise bad("it needs an 'images' list and an 'annotations' list")
    ids: set = set()
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int | str):
            raise bad(f"images[{i}] needs an 'id' (a number or string), got {im!r:.80}")
        if not isinstance(im.get("file_name"), str):
            got = im.get("file_name")
            raise bad(f"image id {im['id']}: 'file_name' must be a string, got {got!r:.80}")
        for k in ("width", "height"):
            try:
                _size(im.get(k))
            except ValueError as e:
                raise bad(f"image id {im['id']}: '{k}' {e}") from None
        if im["id"] in ids:
            raise bad(f"image id {im['id']} appears twice in 'images'")
        ids.add(im["id"])
    panoptic, attached, orphans = _panoptic(anns), [], []
    for j, a in enumerate(anns):
        if panoptic:
            if not (isinstance(a, dict) and isinstance(a.get("segments_info"), list)):
                raise bad(f"annotations[{j}] needs a 'segments_info' list, got {a!r:.80}")
            if not isinstance(a.get("file_name"), str):
                raise bad(f"annotations[{j}]: 'file_name' (its PNG) must be a string")
            if (iid := a.get("image_id")) not in ids:
                orphans.append(f"annotation of {a['file_name']} (image_id {iid!r:.40})")
                continue
        elif not isinstance(a, dict):
            raise bad(f"annotations[{j}] must be an object, got {a!r:.80}")
        elif not isinstance(iid := a.get("image_id"), int | str) or iid not in ids:
            orphans.append(f"annotation id {a.get('id')} (image_id {iid!r:.40})")
            continue
        attached.append(a)
    _warn_orphans(js, orphans)
    coco = COCO()
    coco.dataset = {"images": images, "annotations": attached}
    # pycocotools keys annotations by 'id', which panoptic entries (and some files) lack: an id
    # None while it indexes them, so .imgToAnns holds the annotations as the file has them
    no_id = [a for a in attached if "id" not in a]
    for a in no_id:
        a["id"] = None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "creating index..."
        coco.createIndex()
    for a in no_id:
        del a["id"]
    coco.dataset = d
    return coco


def coco_records(js: Path, crowd: bool, stuff: bool = False) -> list[Record]:
    """A COCO instances (or panoptic) JSON -> one Record per image (index_coco says why a file
    is not one); crowd regions are left out (counted) unless crowd, panoptic stuff segments
    unless stuff."""
    coco = index_coco(js)
    if _panoptic(coco.dataset.get("annotations", [])):
        return _panoptic_records(js, coco, Options(crowd=crowd, stuff=stuff))
    out = []
    for im in coco.dataset["images"]:
        path, where = _coco_image(js, im["file_name"])
        keep, left = [], []
        for a in coco.imgToAnns.get(im["id"], []):
            (left if a.get("iscrowd") == 1 and not crowd else keep).append(a)
        w, h = _size(im.get("width")), _size(im.get("height"))
        out.append(Record(path, None, "coco", keep, w, h, crowd=left, looked_in=where))
    return out


def _panoptic_records(js: Path, coco: COCO, opts: Options) -> list[Record]:
    """COCO panoptic (COCO, detectron2, datumaro): an annotation per image names its PNG
    (ROOT/annotations/panoptic_<subset>/x.png, segment id = R + 256 G + 256^2 B) and lists its
    'segments_info'. Things are instances; stuff (a category with isthing 0) and crowd segments
    are left out, counted, unless opts.stuff / opts.crowd. An image without an entry has none."""
    d = coco.dataset
    cats = d.get("categories") if isinstance(d.get("categories"), list) else []
    isthing = {c.get("id"): c.get("isthing", 1) for c in cats if isinstance(c, dict)}
    out = []
    for im in d["images"]:
        im_id, w, h = im["id"], _size(im.get("width")), _size(im.get("height"))
        path, where = _coco_image(js, im["file_name"])
        a = (coco.imgToAnns.get(im_id) or [None])[-1]  # the last entry of an image counts
        keep, crowd, stuff = [], [], []
        for k, seg in enumerate(a["segments_info"] if a else []):
            if not (isinstance(seg, dict) and isinstance(seg.get("id"), int)):
                raise _bad(js, f"image id {im_id}: segments_info[{k}] needs an integer 'id'")
            if seg.get("iscrowd") == 1 and not opts.crowd:
                crowd.append(seg)
            elif isthing.get(seg.get("category_id"), 1) == 0 and not opts.stuff:
                stuff.append(seg)
            else:
                keep.append(seg)
        png = js.with_suffix("") / a["file_name"] if a else None
        rec = Record(path, png, "panoptic", keep, w, h, crowd=crowd, looked_in=where, stuff=stuff)
        out.append(rec)
    return out


def coco_parts(jsons: Callable[[Path], list[Path]], root: Path, opts: Options) -> Parts:
    """One part per COCO file `jsons` finds under root, its split from its name."""
    return [
        (rel(j, root), coco_split(j), partial(coco_records, j, opts.crowd, opts.stuff))
        for j in jsons(root)
    ]


COCO_LAYOUT = Layout(
    "coco",
    "ROOT/annotations/instances_train.json + ROOT/images/x.jpg (CVAT: images/default/), "
    "ROOT/train/_annotations.coco.json (Roboflow), or a path to the .json",
    lambda r: bool(coco_jsons(r)),
    partial(coco_parts, coco_jsons),
    file=lambda p: p.suffix.lower() == ".json" and not not_coco(p),
    instances=_coco_instances,
    checks=lambda r: False,  # no annotation file: the JSON was read when the record was made
    annotated=lambda r: True,  # an image without annotations is one with no objects
)
