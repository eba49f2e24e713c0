"""The synthetic demo datasets: LabPics-style photos of vessels with liquid phases
(make_demo), and DAVIS-style clips of moving, occluding shapes (make_video_demo). Both are
deterministic for a seed."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from layouts.video import VIDEO_DIRS
from plumbing.files import DataError


def _demo_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic lab photo: BGR image (H, W, 3) uint8 and LabPics instance map (H, W, 3)
    uint8 with material ids in channel 0 and vessel ids in channel 2."""
    h, w = [(240, 320), (320, 240), (300, 400), (360, 480), (480, 360), (480, 640)][rng.integers(6)]
    # textured background: smooth blotches + a lighting gradient + pixel noise
    low = rng.uniform(40, 200, (4, 5, 3)).astype(np.float32)
    bg = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    bg += np.linspace(-25, 25, w, dtype=np.float32)[None, :, None]
    bg += rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    img = bg
    ann = np.zeros((h, w, 3), np.uint8)
    n_vessels = int(rng.integers(1, 4))
    slot = w // n_vessels
    mat_id = 0
    for v in range(n_vessels):
        vw = int(rng.uniform(0.5, 0.85) * slot)
        vh = int(rng.uniform(0.45, 0.8) * h)
        x0 = v * slot + int(rng.integers(0, slot - vw + 1))
        y0 = int(rng.integers(int(0.05 * h), h - vh))
        shape = np.zeros((h, w), np.uint8)
        if rng.random() < 0.5:  # flask-like ellipse
            cv2.ellipse(shape, (x0 + vw // 2, y0 + vh // 2), (vw // 2, vh // 2), 0, 0, 360, 1, -1)
        else:  # beaker: rounded rectangle = rectangles + corner circles
            r = max(2, min(vw, vh) // 6)
            cv2.rectangle(shape, (x0 + r, y0), (x0 + vw - r, y0 + vh), 1, -1)
            cv2.rectangle(shape, (x0, y0 + r), (x0 + vw, y0 + vh - r), 1, -1)
            for cx, cy in [
                (x0 + r, y0 + r),
                (x0 + vw - r, y0 + r),
                (x0 + r, y0 + vh - r),
                (x0 + vw - r, y0 + vh - r),
            ]:
                cv2.circle(shape, (cx, cy), r, 1, -1)
        inside = shape.astype(bool)
        # glass: slightly brighter, bluish see-through body, light rim, one highlight streak
        img[inside] = img[inside] * 0.8 + np.array([235, 225, 215], np.float32) * 0.2
        rim = cv2.morphologyEx(shape, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
        img[rim] = 235
        img[y0 + vh // 6 : y0 + vh - vh // 6, x0 + vw // 5 : x0 + vw // 5 + 2][
            inside[y0 + vh // 6 : y0 + vh - vh // 6, x0 + vw // 5 : x0 + vw // 5 + 2]
        ] = 245
        ann[inside, 2] = v + 1
        # 1-3 liquid phases stacked from the bottom, each a horizontal band of one colour
        top = y0 + int(rng.uniform(0.2, 0.6) * vh)
        cuts = np.sort(rng.integers(top, y0 + vh, int(rng.integers(0, 3))))
        edges = [top, *cuts.tolist(), y0 + vh + 1]
        interior = cv2.erode(shape, np.ones((5, 5), np.uint8)).astype(bool)
        for a, b in itertools.pairwise(edges):
            band = np.zeros((h, w), bool)
            band[a:b] = True
            band &= interior
            if band.sum() < 30:
                continue
            mat_id += 1
            colour = rng.uniform(20, 235, 3).astype(np.float32)
            img[band] = img[band] * 0.25 + colour * 0.75 + rng.normal(0, 4, (band.sum(), 1))
            ann[band, 0] = mat_id
    return np.clip(img, 0, 255).astype(np.uint8), ann


def _write(path: Path, img: np.ndarray, params: list[int] | None = None) -> None:
    ok, buf = cv2.imencode(path.suffix, img, params or [])
    if not ok:
        raise DataError(f"{path}: could not encode")
    buf.tofile(path)  # tofile: non-ASCII paths work, unlike cv2.imwrite on some platforms


def make_demo(root: str | Path, n_train: int = 16, n_test: int = 6, seed: int = 0) -> Path:
    """Write a deterministic synthetic LabPics V1 style dataset (Simple/Train, Simple/Test) of
    vessels with 1-3 liquid phases; returns root."""
    root = Path(root)
    for split, n in (("Train", n_train), ("Test", n_test)):
        (root / "Simple" / split / "Image").mkdir(parents=True, exist_ok=True)
        (root / "Simple" / split / "Instance").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, split == "Test", i])
            img, ann = _demo_image(rng)
            name = f"demo_{split.lower()}_{i:03d}"
            _write(
                root / "Simple" / split / "Image" / f"{name}.jpg",
                img,
                [cv2.IMWRITE_JPEG_QUALITY, 90],
            )
            _write(root / "Simple" / split / "Instance" / f"{name}.png", ann)
    return root


def make_video_demo(
    root: str | Path, n_train: int = 4, n_test: int = 1, frames: int = 4, size=(120, 160), seed=0
) -> Path:
    """Write a synthetic DAVIS-style dataset of `frames`-frame clips (size (H, W)): a disc and a
    box cross, the box passing in front (occlusion) and leaving the frame, a triangle entering
    from the left, on a textured background; palette label PNGs, ImageSets/2017 lists."""
    root, (h, w) = Path(root), size
    lists = root / "ImageSets" / "2017"
    lists.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_test)):
        names = [f"{split}{i:02d}" for i in range(n)]
        (lists / f"{split}.txt").write_text("".join(f"{v}\n" for v in names))
        for i, name in enumerate(names):
            rng = np.random.default_rng([seed, split == "val", i])
            low = rng.uniform(40, 200, (3, 4, 3)).astype(np.float32)
            bg = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
            y = rng.uniform(0.35, 0.65) * h
            r = rng.uniform(0.08, 0.14) * min(h, w)
            colours = rng.uniform(30, 230, (4, 3))
            for d in VIDEO_DIRS:
                (root / d / name).mkdir(parents=True, exist_ok=True)
            for t in range(frames):
                a = t / max(frames - 1, 1)
                lab = np.zeros((h, w), np.uint8)
                disc = (int((0.15 + 0.45 * a) * w), int(y))
                cv2.circle(lab, disc, int(r), 1, -1)
                tx, ty = (-0.3 + 0.7 * a) * w, 0.25 * h
                tri = np.array([[tx, ty - r], [tx - r, ty + r], [tx + r, ty + r]], np.int32)
                cv2.fillPoly(lab, [tri], 3)
                bx = int((0.9 - 1.15 * a) * w)
                cv2.rectangle(lab, (bx, int(y - r)), (bx + int(1.6 * r), int(y + r)), 2, -1)
                img = bg + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
                for k in (1, 2, 3):
                    img[lab == k] = colours[k] + rng.normal(0, 8, ((lab == k).sum(), 3))
                jpg, png = (root / d / name / f"{t:05d}" for d in VIDEO_DIRS)
                _write(jpg.with_suffix(".jpg"), np.clip(img, 0, 255).astype(np.uint8))
                label = Image.fromarray(lab)
                label.putpalette([0, 0, 0, 200, 40, 40, 40, 200, 40, 40, 40, 220])
                label.save(png.with_suffix(".png"))
    return root
