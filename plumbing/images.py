"""Images and label PNGs as the readers need them: any pixel format read as it is (8/16-bit and
float PNG and TIFF, gray to N channels) and turned into uint8 RGB by one PixelRule (8-bit files
exactly as cv2.imread reads them), label maps of instance ids, exact nearest-neighbour
resizing, the size from a header, and a cut-off file's missing end marker."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from plumbing.files import DataError, read_bytes
from plumbing.intensity import DEFAULT_RULE, PixelInfo, PixelRule, to_rgb

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
END_MARKERS = {
    b"\xff\xd8": ("JPEG", b"\xff\xd9"),
    PNG_SIGNATURE[:2]: ("PNG", b"IEND"),
}  # start -> (kind, end)
CHANNEL_AXES = "CS"  # tifffile's axes: C channel, S sample (RGB...); Y, X the plane


def unreadable(name: str | Path) -> DataError:
    return DataError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")


def decode_rgb(data: np.ndarray, name: str | Path) -> np.ndarray:
    """Encoded image bytes (uint8) -> (H, W, 3) uint8 RGB exactly as cv2.imread reads it
    (EXIF orientation applied, 16 bits shifted to 8); DataError naming `name`."""
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise unreadable(name)
    return np.ascontiguousarray(img[..., ::-1])


def is_tiff(data: np.ndarray | bytes) -> bool:
    return bytes(data[:4]) in TIFF_MAGICS


def _tiff_planes(tif: tifffile.TiffFile) -> tuple[tuple[int, ...], str, np.dtype]:
    """The first series of a TIFF: (shape, axes, dtype), header only."""
    s = tif.series[0]
    return tuple(s.shape), s.axes, s.dtype


def _to_hwc(arr: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """A TIFF series (any axes with Y and X) -> (H, W, C) and a note on planes not read.

    Channel axes (C, S) become C. Without one, a single other axis (pages of a multi-page
    file, as tifffile writes a (C, H, W) stack) is the channels. Any other axis (Z, T, ...)
    is read at its first plane, and the note says so."""
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"no Y and X axes in {axes!r}")
    others = [i for i, a in enumerate(axes) if a not in "YX" + CHANNEL_AXES and arr.shape[i] > 1]
    chans = [i for i, a in enumerate(axes) if a in CHANNEL_AXES]
    if not chans and len(others) == 1:
        chans, others = others, []
    note = ""
    if others:
        note = "first of " + " x ".join(f"{arr.shape[i]} {axes[i]}" for i in others) + " planes"
    # first plane of every axis that is neither the plane nor channels
    index = tuple(slice(None) if a in "YX" or i in chans else 0 for i, a in enumerate(axes))
    kept = [a if i not in chans else "C" for i, a in enumerate(axes) if isinstance(index[i], slice)]
    arr = arr[index]
    order = [kept.index("Y"), kept.index("X")] + [i for i, a in enumerate(kept) if a == "C"]
    arr = np.transpose(arr, order)
    return arr.reshape(*arr.shape[:2], -1), note


def _decode_tiff(data: np.ndarray, name: str | Path) -> tuple[np.ndarray, str]:
    try:
        with tifffile.TiffFile(io.BytesIO(data.tobytes())) as tif:
            shape, axes, _ = _tiff_planes(tif)
            return _to_hwc(tif.series[0].asarray(), axes)
    except Exception as e:  # tifffile raises many kinds; a codec it lacks is the usual one
        why = e
    # libtiff (through cv2) reads the compressions tifffile needs imagecodecs for (LZW, JPEG)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{name}: not a readable TIFF ({type(why).__name__}: {why})") from why
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., [2, 1, 0, 3][: img.shape[2]]]
    return img.reshape(*img.shape[:2], -1), "first page (read by OpenCV)"


def decode_raw(data: np.ndarray, name: str | Path) -> tuple[np.ndarray, str]:
    """Encoded image bytes -> ((H, W, C) array of the file's own dtype and values, note).

    TIFF by tifffile: multi-page, channel-first or channel-last, OME/ImageJ axes (_to_hwc).
    Other files by cv2 keeping their depth: gray (H, W, 1), colour (H, W, 3) RGB with EXIF
    orientation applied as cv2.imread does; a PNG's alpha is dropped, as cv2.imread drops it.
    Nothing is shifted, scaled or clipped. DataError naming `name` if it cannot be read."""
    if is_tiff(data):
        return _decode_tiff(data, name)
    img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None:
        raise unreadable(name)
    img = img[..., ::-1] if img.ndim == 3 else img[..., None]
    return np.ascontiguousarray(img), ""


def read_raw(path: str | Path) -> np.ndarray:
    """Image file -> (H, W, C) array of its own dtype and values (decode_raw)."""
    return decode_raw(read_bytes(Path(path)), path)[0]


def channel_count(path: str | Path) -> int:
    """The channels decode_raw gives a file, from its header: a TIFF's channel axes (or its
    one other axis, _to_hwc's rule), a PNG's colour type (alpha dropped); other files 3."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:4] in TIFF_MAGICS:
            f.seek(0)
            try:
                with tifffile.TiffFile(f) as tif:
                    shape, axes, _ = _tiff_planes(tif)
            except Exception:
                return 3  # read by OpenCV, if at all: the read says why not
            chans = [n for n, a in zip(shape, axes) if a in CHANNEL_AXES]
            others = [n for n, a in zip(shape, axes) if a not in "YX" + CHANNEL_AXES and n > 1]
            if not chans and len(others) == 1:
                chans = others
            return int(np.prod(chans)) if chans else 1
    if head[:8] == PNG_SIGNATURE and len(head) > 25:
        return 1 if head[25] in (0, 4) else 3  # gray (+ alpha) or colour / palette
    return 3


def _eight_bit(data: np.ndarray) -> bool:
    """Whether cv2.imread reads this file whole and unshifted as 8-bit, 1/3/4 channels: the
    files read exactly as before the PixelRule existed (header only)."""
    head = bytes(data[:26])
    if head[:8] == PNG_SIGNATURE:
        return len(head) > 24 and head[24] <= 8  # IHDR bit depth
    if not is_tiff(data):
        return True  # JPEG, BMP, WebP: 8-bit
    try:
        with tifffile.TiffFile(io.BytesIO(data.tobytes())) as tif:
            shape, axes, dtype = _tiff_planes(tif)
    except Exception:
        return True  # let cv2 read it, or name it unreadable as before
    planes = [n for n, a in zip(shape, axes) if a not in "YXS" and n > 1]
    samples = dict(zip(axes, shape)).get("S", 1)
    return dtype == np.uint8 and not planes and samples in (1, 3, 4)


def decode_image(data: np.ndarray, name: str | Path, rule: PixelRule = DEFAULT_RULE) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB by the rule. An 8-bit file under a plain
    rule (auto or none, default channels) is read exactly as cv2.imread reads it."""
    if rule.plain and _eight_bit(data):
        return decode_rgb(data, name)
    return to_rgb(decode_raw(data, name)[0], rule, name)


def read_image(path: str | Path, rule: PixelRule = DEFAULT_RULE) -> np.ndarray:
    """Image file of any pixel format -> (H, W, 3) uint8 RGB by the rule (decode_image)."""
    return decode_image(read_bytes(Path(path)), path, rule)


def read_rgb(path: str | Path, rule: PixelRule = DEFAULT_RULE) -> np.ndarray:
    """Image file -> (H, W, 3) uint8 RGB. 8-bit files exactly as cv2.imread reads them: EXIF
    orientation applied, gray / alpha converted; other depths by the rule (default: auto,
    per-image percentiles, where cv2 would shift 16 bits to 8). cv2 refuses cut-off files."""
    return read_image(path, rule)


def pixel_info(path: str | Path) -> PixelInfo:
    """What an image file holds (dtype, channels, size, value range); reads its pixels."""
    raw, note = decode_raw(read_bytes(Path(path)), path)
    return PixelInfo.of(raw, note)


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
    returns it (EXIF orientations 5-8 swap the sides, as cv2.imread turns them). A TIFF's
    from tifffile's first series (PIL refuses 2 or 5+ channels), never rotated."""
    f = open(path, "rb") if isinstance(path, (str, Path)) else path
    try:
        head = f.read(4)
        f.seek(0)
        if head in TIFF_MAGICS:
            try:
                with tifffile.TiffFile(f) as tif:
                    shape, axes, _ = _tiff_planes(tif)
                return shape[axes.index("X")], shape[axes.index("Y")]
            except Exception:  # not tifffile's kind of TIFF: PIL's header, as before
                f.seek(0)
    finally:
        if f is not path:
            f.close()
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
