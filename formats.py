"""Prompt and result files of infer.py: detector boxes in, COCO results and COCOeval AP out.

Boxes are read as their writers write them:
    [[x0, y0, x1, y1], ...]                      one image's boxes, in pixels
    {"a.jpg": [[x0, y0, x1, y1], ...], ...}      boxes per image name
    [{"image_id" | "file_name", "bbox": [x, y, w, h], "score", "category_id"}, ...]
        COCO-style detections: Ultralytics' predictions.json (image_id = int(stem) for a
        numeric file stem, else the stem), detectron2's coco_instances_results.json (the
        dataset's integer image ids: give its COCO JSON to map them to files)
    {"images": [...], "annotations": [...]}      a COCO file (its images name its ids)
    labels/a.txt, one line per box: cls cx cy w h [conf] [track id], normalized to 0..1
        (yolo predict|track --save-txt [--save-conf]); a folder of them, matched by stem.
        Ultralytics writes the conf only with save_conf and the id only when tracking, so
        a 6-column file is read as confs when they all lie in [0, 1] and refused otherwise
Results are COCO results (pycocotools' loadRes reads them): one record per mask with
image_id, category_id, score, an RLE segmentation and its bbox.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from layouts.coco import index_coco
from plumbing.files import DataError, write_atomic


@dataclass
class Boxes:
    """One image's detections. xyxy (N, 4) float64 x0, y0, x1, y1, in pixels or, when
    `normalized`, as fractions of the image's width and height (YOLO txt); score and category
    (N,) float64, NaN where the file gives none; index (N,) int, each box's place in its file
    (entry of a JSON list, line of a txt file), 0-based; bad_score (N,) bool, True where the
    file gives a score that is not a finite number (its score is NaN too)."""

    xyxy: np.ndarray
    score: np.ndarray = None
    category: np.ndarray = None
    index: np.ndarray = None
    bad_score: np.ndarray = None
    normalized: bool = field(default=False, kw_only=True)

    def __post_init__(self):
        self.xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(self.xyxy)
        defaults = {
            "score": (np.full(n, np.nan), np.float64),
            "category": (np.full(n, np.nan), np.float64),
            "index": (np.arange(n), np.int64),
            "bad_score": (np.zeros(n, bool), bool),
        }
        for name, (default, dtype) in defaults.items():
            value = getattr(self, name)
            value = default if value is None else value
            setattr(self, name, np.asarray(value, dtype=dtype).reshape(-1))
        self.score = np.where(self.bad_score, np.nan, self.score)  # never passes a --conf

    def __len__(self) -> int:
        return len(self.xyxy)

    def take(self, keep) -> Boxes:
        """The boxes at `keep` (a bool mask or indices), in that order."""
        return Boxes(
            self.xyxy[keep],
            self.score[keep],
            self.category[keep],
            self.index[keep],
            self.bad_score[keep],
            normalized=self.normalized,
        )

    def in_pixels(self, hw: tuple[int, int]) -> Boxes:
        """Normalized boxes scaled to an (H, W) image; pixel boxes as they are."""
        if not self.normalized:
            return self
        h, w = hw
        return Boxes(
            self.xyxy * [w, h, w, h], self.score, self.category, self.index, self.bad_score
        )

    @staticmethod
    def cat(parts: list[Boxes]) -> Boxes:
        return Boxes(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.category for p in parts]),
            np.concatenate([p.index for p in parts]),
            np.concatenate([p.bad_score for p in parts]),
            normalized=parts[0].normalized,
        )


def _box_array(value, where: str) -> np.ndarray:
    """A JSON list of [x0, y0, x1, y1] (or of COCO [x, y, w, h]) -> (N, 4) float64."""
    try:
        boxes = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        boxes = None
    if boxes is None or not (boxes.size == 0 or (boxes.ndim == 2 and boxes.shape[1] == 4)):
        raise DataError(f"{where}: expected a list of [x0, y0, x1, y1] boxes, got {value!r:.80}")
    return boxes.reshape(-1, 4)


def _number(det: dict, key: str, where: str) -> float:
    value = det.get(key)
    if value is None:
        return np.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: '{key}' is {value!r:.40}, not a number")
    return float(value)


def read_detections(dets: list[dict], where: str) -> dict[str | int, Boxes]:
    """COCO-style detections -> {file name, else image_id as written: Boxes}."""
    rows: dict[str | int, list] = {}
    for i, det in enumerate(dets):
        key, at = det.get("file_name", det.get("image_id")), f"{where}, detection {i}"
        if not isinstance(key, (str, int)) or isinstance(key, bool) or "bbox" not in det:
            raise DataError(f"{at} lacks 'bbox' or a 'file_name'/'image_id' (a name or number)")
        x, y, w, h = _box_array([det["bbox"]], at)[0]
        key = Path(key).name if isinstance(key, str) else key
        score = _number(det, "score", at)
        bad = "score" in det and det["score"] is not None and not np.isfinite(score)
        row = (x, y, x + w, y + h, score, _number(det, "category_id", at), i, bad)
        rows.setdefault(key, []).append(row)
    return {k: Boxes(*np.split(np.array(v), [4, 5, 6, 7], axis=1)) for k, v in rows.items()}


def read_yolo_txt(path: Path) -> Boxes:
    """One image's label file as Ultralytics' Results.save_txt writes it (yolo predict or
    track with save_txt): lines cls cx cy w h [conf] [track id], the box in fractions of the
    image's size -> normalized Boxes. The conf comes with save_conf, the id when tracking, one
    layout per file: 7 columns are conf then id; 6 are confs when all lie in [0, 1], else a
    DataError (a track id and a conf cannot be told apart there). "nan" confs are bad scores."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--boxes {path}: cannot read it ({e})") from None
    rows = []
    for n, line in enumerate(lines):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if not 5 <= len(values) <= 7:
            raise DataError(
                f"--boxes {path}, line {n + 1}: expected 'cls cx cy w h [conf] [id]' (a "
                f"detection line of yolo predict --save-txt), got {line.strip()!r:.60}"
            )
        rows.append((n, values))
    widths = sorted({len(v) for _, v in rows})
    if len(widths) > 1:
        raise DataError(
            f"--boxes {path}: lines of {' and '.join(map(str, widths))} columns in one file; "
            "Ultralytics writes one layout per run: cls cx cy w h, then the conf (save_conf), "
            "then the track id (yolo track)"
        )
    conf = np.array([v[5] if len(v) > 5 else np.nan for _, v in rows])
    outside = np.isfinite(conf) & ((conf < 0) | (conf > 1))
    if outside.any():
        line, value = rows[int(np.argmax(outside))][0] + 1, conf[outside][0]
        if widths == [6]:
            raise DataError(
                f"--boxes {path}: column 6 holds {value:g} (line {line}), not a conf in [0, 1]; "
                "Ultralytics writes either the conf (save_conf) or the track id (yolo track) "
                "there, and this file cannot say which. Rerun with save_conf=True (then lines "
                "are cls cx cy w h conf id) or cut the column off (no scores)"
            )
        raise DataError(
            f"--boxes {path}, line {line}: conf {value:g} is not in [0, 1] (7 columns are "
            "cls cx cy w h conf id, as yolo track writes them with save_conf)"
        )
    table = []
    for (n, v), c in zip(rows, conf):
        cls, cx, cy, w, h = v[:5]
        bad = len(v) > 5 and not np.isfinite(c)
        table.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, c, cls, n, bad))
    table = np.array(table, dtype=np.float64).reshape(-1, 8)
    return Boxes(*np.split(table, [4, 5, 6, 7], axis=1), normalized=True)


def read_boxes(path: str | Path) -> dict[str | int | None, Boxes]:
    """Box prompts from a file or folder (formats in the module docstring) -> {image: Boxes}.

    Keys: a file name (or a txt file's stem) matched to images by name or stem, an image_id
    as written (int or str, see match_boxes), or None for one image's boxes. Raises DataError.
    """
    path = Path(path)
    if path.is_dir():
        txts = sorted(path.glob("*.txt")) or sorted(path.glob("labels/*.txt"))  # runs/detect/x
        if not txts:
            raise DataError(f"--boxes {path}: no YOLO .txt labels in it nor in its labels/")
        return {p.stem: read_yolo_txt(p) for p in txts}
    if path.suffix.lower() == ".txt":
        return {None: read_yolo_txt(path)}
    try:
        obj = json.loads(path.read_bytes())
    except OSError as e:
        raise DataError(f"--boxes {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError and bad UTF-8 alike
        raise DataError(f"--boxes {path} is not valid JSON ({e})") from None
    if isinstance(obj, dict) and "annotations" in obj:  # a COCO file: image ids -> file names
        names = {im.get("id"): im.get("file_name") for im in obj.get("images", [])}
        obj = [
            dict(a, file_name=names.get(a.get("image_id"), a.get("image_id")))
            for a in obj["annotations"]
        ]
    if isinstance(obj, list) and obj and all(isinstance(d, dict) for d in obj):
        return read_detections(obj, f"--boxes {path}")
    if isinstance(obj, list):
        return {None: Boxes(_box_array(obj, f"--boxes {path}"))}
    if isinstance(obj, dict):
        return {
            Path(k).name: Boxes(_box_array(v, f"--boxes {path}, image {k!r}"))
            for k, v in obj.items()
        }
    raise DataError(f"--boxes {path}: expected a JSON list or object, got {type(obj).__name__}")


def _some(items, n: int = 3) -> str:
    items = [str(x) for x in items]
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def match_boxes(
    table: dict, images: list[Path], source: str, gt_ids: dict[str, int] | None = None
) -> tuple[list[Boxes], list[str]]:
    """Each image's boxes from read_boxes' table, and what did not match, in words.

    A key matches an image by file name, else by stem; an integer image_id through `gt_ids`
    (a COCO ground truth's file name -> id) when given, else the image whose stem is that
    number (Ultralytics writes int(stem) for 000000000139.jpg). Raises DataError when no key
    matches any image, or when one image's list is given for several images.
    """
    if None in table:
        if len(images) > 1:
            raise DataError(
                f"--boxes {source} is one list of boxes, for one image; for a folder give "
                '{"image name": [[x0, y0, x1, y1], ...]}, COCO-style detections or a folder of '
                "YOLO txt files"
            )
        return [table[None]], []
    names: dict = {}
    for p in reversed(images):  # the first image wins a shared name, stem or number
        names[p.stem] = names[p.name] = p
    if gt_ids is not None:  # the ground truth says which file an id is: no guess from stems
        numbers = {i: names[n] for n, i in gt_ids.items() if n in names}
    else:
        numbers = {int(p.stem): p for p in reversed(images) if p.stem.isdigit()}
    found: dict[Path, list[Boxes]] = {}
    unknown = []
    for key, boxes in table.items():
        p = numbers.get(key) if isinstance(key, int) else names.get(str(key))
        if p is None:
            unknown.append((key, len(boxes)))
        else:
            found.setdefault(p, []).append(boxes)
    if not found:
        hint = ""
        if all(isinstance(k, int) for k, _ in unknown):  # ids: --gt says which image each is
            if gt_ids is None:
                hint = " (its image ids are numbers: give the dataset's COCO JSON as --gt)"
            elif numbers:
                hint = (
                    f" (--gt gives these images ids {_some(sorted(numbers))}: its detections "
                    "are of other images, or number them after another JSON than --gt)"
                )
            else:
                hint = " (its image ids are numbers, and --gt has none of these images' names)"
        raise DataError(
            f"--boxes {source} has boxes for none of the images ({_some(p.name for p in images)})"
            f"; it names {_some(k for k, _ in unknown)}{hint}"
        )
    notes = []
    if unknown:
        notes.append(
            f"{sum(n for _, n in unknown)} boxes of {len(unknown)} images not here "
            f"({_some(k for k, _ in unknown)}) ignored"
        )
    missing = [p.name for p in images if p not in found]
    if missing:
        notes.append(f"{len(missing)} images without boxes ({_some(missing)})")
    empty = Boxes(np.zeros((0, 4)))
    return [Boxes.cat(found[p]) if p in found else empty for p in images], notes


def drop_bad_scores(boxes: Boxes) -> tuple[Boxes, list[int]]:
    """Boxes whose file gives no score or a finite one -> (those, the others' places in the
    file): a NaN score would otherwise pass any --conf and be written as SAM's."""
    return boxes.take(~boxes.bad_score), boxes.index[boxes.bad_score].tolist()


def select_boxes(
    boxes: Boxes, conf: float | None = None, classes: list[int] | None = None
) -> tuple[Boxes, int, int]:
    """Boxes scored at least `conf` (those without a score stay) and of `classes` (None: all)
    -> (kept, number under conf, number of other classes)."""
    low = boxes.score < conf if conf is not None else np.zeros(len(boxes), bool)  # NaN: False
    other = ~np.isin(boxes.category, classes) if classes is not None else np.zeros_like(low)
    return boxes.take(~low & ~other), int(low.sum()), int((other & ~low).sum())


def clip_boxes(boxes: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list]:
    """Clip (N, 4) x0, y0, x1, y1 boxes to an (H, W) image.

    Returns the clipped boxes that keep some area (N', 4), which of the N those are (N,) bool,
    and why each other one was dropped: [(i, "inverted" | "outside" | "not finite"), ...].
    """
    h, w = hw
    clipped = np.clip(boxes, 0, [w, h, w, h])
    ok = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])  # NaN: False
    finite = np.isfinite(boxes).all(axis=1)
    inverted = finite & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    why = np.where(~finite, "not finite", np.where(inverted, "inverted", "outside"))
    return clipped[ok], ok, [(int(i), str(why[i])) for i in np.flatnonzero(~ok)]


def describe_dropped(dropped: list[tuple[str, int, list, str]]) -> str:
    """One line for boxes clip_boxes dropped: [(image name, i, box, why), ...]."""
    kinds = {}
    for name, i, box, why in dropped:
        kinds.setdefault(why, []).append(f"{name} box {i} {[round(v, 1) for v in box]}")
    words = {
        "inverted": "inverted (x1 < x0 or y1 < y0)",
        "outside": "with no area inside their image",
        "not finite": "with a coordinate that is not a number",
    }
    parts = [f"{len(v)} {words[k]}: {_some(v, 2)}" for k, v in kinds.items()]
    return f"skipped {len(dropped)} boxes: " + "; ".join(parts)


# ----------------------------------------------------------------------------- results


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE {"size": [H, W], "counts": str}, as JSON takes it."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def coco_image_id(name: str, gt_ids: dict[str, int] | None = None) -> int | str | None:
    """The image id a results file uses for image `name`: the ground truth's when given (None if
    it lacks the image), else Ultralytics' rule: int(stem) for a numeric stem, else the stem."""
    stem = Path(name).stem
    if gt_ids is not None:
        return gt_ids.get(name, gt_ids.get(stem))
    return int(stem) if stem.isdigit() else stem


def coco_record(image_id, file_name: str, mask_rle: dict, score: float, category=1, **extra):
    """One COCO results entry (plus infer.py's own keys in `extra`)."""
    return {
        "image_id": image_id,
        "file_name": file_name,
        "category_id": int(category),
        "score": round(float(score), 5),
        "segmentation": mask_rle,
        "bbox": [round(float(v), 2) for v in mask_utils.toBbox(mask_rle)],
        **extra,
    }


def write_json(path: Path, obj) -> Path:
    """json.dumps(obj) written atomically (plumbing.files.write_atomic): a crash never leaves
    half a file."""
    text = json.dumps(obj)
    write_atomic(path, lambda f: f.write(text.encode()))
    return path


def load_coco(path: str | Path):
    """A COCO instances JSON as pycocotools' COCO (read as train.py reads one:
    layouts.coco.index_coco) and {file name and stem: image id}. Raises DataError naming the
    file."""
    try:
        coco = index_coco(Path(path))
    except DataError as e:
        raise DataError(f"--gt {e}") from None
    if why := _not_scorable(coco.dataset):
        raise DataError(f"--gt {path}: not a readable COCO instances JSON: {why}")
    ids = {}
    for im in coco.dataset["images"]:
        name = Path(im["file_name"]).name
        ids.setdefault(Path(name).stem, im["id"])
        ids.setdefault(name, im["id"])
    return coco, ids


def _not_scorable(d: dict) -> str | None:
    """Why COCOeval cannot score against ground truth `d`, None if it can: it finds masks by
    their 'id' and, where the file lists categories, by their 'category_id' (training needs
    neither)."""
    cats = d.get("categories")
    if cats is not None and not isinstance(cats, list):
        return "'categories' must be a list"
    for j, c in enumerate(cats or []):
        if not isinstance(c, dict) or "id" not in c:
            return f"categories[{j}] has no 'id'"
    for j, a in enumerate(d.get("annotations", [])):
        for k in ("id", "category_id") if cats is not None else ("id",):
            if k not in a:
                return f"annotations[{j}] has no '{k}' (COCOeval needs one)"
    return None


def coco_ap(gt, results: list[dict], image_ids: list, use_categories: bool) -> dict:
    """pycocotools' COCOeval segm on `results` over `image_ids` (its table printed) ->
    {"AP", "AP50", "AP75", "APs", "APm", "APl", "images", "use_categories"}."""
    from pycocotools.cocoeval import COCOeval

    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    if not results:
        return {"images": len(image_ids), "use_categories": use_categories} | dict.fromkeys(
            names, 0.0
        )
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = list(image_ids)
        ev.params.useCats = int(use_categories)
        ev.evaluate()
        ev.accumulate()
    ev.summarize()
    stats = {k: float(v) for k, v in zip(names, ev.stats)}
    return stats | {"images": len(image_ids), "use_categories": use_categories}


def coco_entries(name: str, records: list[dict], boxes: Boxes | None, gt_ids=None) -> list:
    """One image's records as COCO results: with boxes, each has its detection's score and
    category (SAM's score and 1 where the file gives none), SAM's score and the box's place in
    the file ("detection"); every one has its id in the label PNG ("label", 0: left out)."""
    image_id = coco_image_id(name, gt_ids)
    image_id = coco_image_id(name) if image_id is None else image_id
    entries = []
    for r in records:
        score, category, extra = r["score"], 1, {"label": r["label"]}
        if boxes is not None:
            b = r["prompt"]
            score = boxes.score[b] if np.isfinite(boxes.score[b]) else score
            category = boxes.category[b] if np.isfinite(boxes.category[b]) else category
            extra |= {"sam_score": round(r["score"], 5), "detection": int(boxes.index[b])}
        entries.append(coco_record(image_id, name, r["segmentation"], score, category, **extra))
    return entries


def split_by_gt(results: list[dict], gt_ids: dict[str, int]) -> tuple[list, list]:
    """COCO results -> (those of images the ground truth has, the others). COCO.loadRes
    refuses a file with any image id its ground truth lacks, so the two go to two files."""
    known = [coco_image_id(r["file_name"], gt_ids) is not None for r in results]
    return [r for r, k in zip(results, known) if k], [r for r, k in zip(results, known) if not k]


def evaluate_coco(coco, gt_ids: dict, results: list, names: list[str], by_class: bool, out):
    """COCOeval segm AP of the run's results over its images that the ground truth has;
    printed and saved as out/coco_eval.json."""
    scored = {n for n in names if coco_image_id(n, gt_ids) is not None}
    ids = [coco_image_id(n, gt_ids) for n in names if n in scored]
    if len(ids) < len(names):
        print(f"note: {len(names) - len(ids)} images are not in --gt: not scored", file=sys.stderr)
    if not ids:
        return None
    foreign = {r["category_id"] for r in results} - set(coco.getCatIds())
    if by_class and foreign:
        print(
            f"warning: --boxes has categories {sorted(foreign)[:5]} that --gt lacks "
            f"({sorted(coco.getCatIds())[:5]}): their masks count as false positives",
            file=sys.stderr,
        )
    stats = coco_ap(coco, [r for r in results if r["file_name"] in scored], ids, by_class)
    print(
        f"COCO segm AP {stats['AP']:.3f}, AP50 {stats['AP50']:.3f}, AP75 {stats['AP75']:.3f} "
        f"over {len(ids)} images ({'per category' if by_class else 'class-agnostic'})"
    )
    return write_json(out / "coco_eval.json", stats)
