"""Images and label PNGs as the readers need them: RGB as cv2.imread reads it, label maps of
instance ids, exact nearest-neighbour resizing, the size from a header, and a cut-off file's
missing end marker."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from plumbing.files import DataError, read_bytes

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
END_MARKERS = {
    b"\xff\xd8": ("JPEG", b"\xff\xd9"),
    PNG_SIGNATURE[:2]: ("PNG", b"IEND"),
}  # start -> (kind, end)


def decode_rgb(data: np.ndarray, name: str | Path) -> np.ndarray:
    """Encoded image bytes (uint8) -> (H, W, 3) uint8 RGB; DataError naming `name`."""
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    return np.ascontiguousarray(img[..., ::-1])


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> (H, W, 3) uint8 RGB exactly as cv2.imread reads it: EXIF orientation
    applied, gray / alpha / 16-bit converted. cv2 refuses cut-off files itself."""
    return decode_rgb(read_bytes(Path(path)), path)


def labpics_merge(ann_bgr: np.ndarray) -> np.ndarray:
    """LabPics instance PNG (H, W, 3) as cv2 reads it -> (H, W) int32 instance ids, 0 = none.

    Channel 0 holds material ids, channel 2 vessel ids. A pixel with a material is that
    material; otherwise its vessel gets an id after all materials. int32 because the article's
    uint8 `vessel * (max + 1)` wraps past 255 and silently merges instances.
    """
    mat = ann_bgr[..., 0].astype(np.int32)
    ves = ann_bgr[..., 2].astype(np.int32)
    return np.where(mat > 0, mat, np.where(ves > 0, ves + mat.max(), 0)).astype(np.int32)


def colour_keys(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours -> (H, W) int64 keys ordered as (B, G, R) values, black 0."""
    c = bgr.astype(np.int64)  # 16 bits a channel fit side by side
    return (c[..., 0] << 32) | (c[..., 1] << 16) | c[..., 2]


def colour_ids(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours -> (H, W) int32 ids: black 0, the others 1..K by (B, G, R) value."""
    keys, ids = np.unique(colour_keys(bgr), return_inverse=True)
    return (ids.reshape(bgr.shape[:2]) + int(keys[0] != 0)).astype(np.int32)


def decode_label(path: Path) -> np.ndarray:
    """Label PNG -> (H, W) values (1-channel; palette: indices) or (H, W, C >= 3) BGR(A)."""
    data = read_bytes(path)
    if data[:8].tobytes() == PNG_SIGNATURE and data.size > 25 and data[25] == 3:
        # palette PNG (PASCAL VOC style): cv2 would expand it to colours, we want the indices
        try:
            with Image.open(path) as im:
                return np.asarray(im)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable label image ({e})") from e
    lab = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # keeps depth and channels, ignores EXIF
    if lab is None:
        raise DataError(f"{path}: not a readable label image (corrupt or unsupported format)")
    if lab.dtype.kind not in "ui":
        raise DataError(f"{path}: label image must hold integers, got {lab.dtype}")
    return lab if lab.ndim == 2 or lab.shape[2] >= 3 else lab[..., 0]


def read_label_map(path: str | Path, labpics: bool = False, ignore_index: int = -1) -> np.ndarray:
    """Label PNG -> (H, W) int32 instance ids, 0 = none; never EXIF-rotated.

    1-channel 8/16-bit: its values; palette PNG: its indices; 3/4-channel: each distinct colour
    one instance (black = none, alpha ignored), or with labpics=True the LabPics merge.
    ignore_index (> 0): that value of an 8-bit or palette PNG becomes 0 (VOC's void border, 255);
    a 16-bit PNG's values are all ids.
    """
    lab = decode_label(Path(path))
    if lab.ndim == 3:
        return labpics_merge(lab) if labpics else colour_ids(lab[..., :3])
    out = lab.astype(np.int32)
    if ignore_index > 0 and lab.dtype == np.uint8:
        out[lab == ignore_index] = 0
    return out


def new_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(H', W') with the longer side max_side."""
    r = max_side / max(h, w)  # as the article: upscales small images too
    return max(1, round(h * r)), max(1, round(w * r))


def resize_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (h, w, ...) to (H, W, ...) with hw = (H, W), by index
    lookup: exact for any dtype (int32 ids, bool), where cv2.resize has gaps."""
    h, w = a.shape[:2]
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
    return a[rows][:, cols]


def resize_longest(image: np.ndarray, max_side: int = 1024, nearest: bool = False) -> np.ndarray:
    """Scale (H, W[, C]) so the longer side == max_side -> (H', W'[, C]).

    nearest=True for label maps (ids must not blend); else area (down) / bilinear (up).
    """
    h, w = image.shape[:2]
    nh, nw = new_size(h, w, max_side)
    if nearest:
        return resize_nearest(image, (nh, nw))
    if (nh, nw) == (h, w):
        return image.copy()
    interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
    return cv2.resize(image, (nw, nh), interpolation=interp)


def image_size(path, oriented: bool = True) -> tuple[int, int]:
    """(W, H) from the header of `path` (a path or a file object); oriented: as read_rgb
    returns it (EXIF orientations 5-8 swap the sides, as cv2.imread turns them)."""
    with Image.open(path) as im:
        exif = Image.Exif()
        if oriented:  # info["exif"], not im.getexif(): that one decodes a whole PNG
            exif.load(im.info.get("exif", b""))
        return im.size[::-1] if exif.get(0x0112) in (5, 6, 7, 8) else im.size


def file_problem(path: str | Path) -> str | None:
    """Why an existing file cannot be a whole image (unreadable, empty, cut off), None if it
    may be one. Reads its first 8 bytes and last 1 KiB only."""
    try:
        with open(path, "rb") as f:
            head, size = f.read(8), f.seek(0, 2)
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError as e:
        return f"{path}: unreadable ({e})"
    if size == 0:
        return f"{path}: zero-byte file"
    # the decoders refuse a cut-off file, but only once they read it all: a missing end
    # marker finds the common cut-off download here at the cost of 1 KiB
    kind, end = END_MARKERS.get(head[:2], ("", b""))
    if end not in tail:
        return f"{path}: truncated {kind} (no end marker)"
    return None
