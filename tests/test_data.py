"""Tests for data.py: readers, splits, samples, bad inputs, demo data and CLI.

python -m pytest -q tests/test_data.py
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import data
from data import DataError, Record

# ----------------------------------------------------------------------------- helpers


def write(path: Path, img: np.ndarray, ext: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext or path.suffix, img)
    assert ok
    buf.tofile(path)
    return path


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def blocks_label(h: int, w: int, n: int) -> np.ndarray:
    """(h, w) label map with instances 1..n as disjoint 2x2 blocks."""
    lab = np.zeros((h, w), np.uint16)
    per_row = w // 2
    for k in range(n):
        r, c = divmod(k, per_row)
        lab[2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = k + 1
    return lab


def make_folder(root: Path, n: int, h: int = 20, w: int = 30) -> list[np.ndarray]:
    """images/ + masks/ with two rectangles per image; returns the label maps."""
    labs = []
    for i in range(n):
        lab = np.zeros((h, w), np.uint8)
        lab[2:8, 3:12] = 1
        lab[10:18, 15:28] = 2
        write(root / "images" / f"im{i:02d}.png", noise_image(h, w, i))
        write(root / "masks" / f"im{i:02d}.png", lab)
        labs.append(lab)
    return labs


def make_labpics(root: Path, n_train: int = 2, n_test: int = 1) -> None:
    h, w = 24, 32
    ann = np.zeros((h, w, 3), np.uint8)
    ann[2:20, 2:14, 2] = 1  # vessel 1
    ann[10:20, 2:14, 0] = 1  # material 1 inside vessel 1
    ann[2:20, 18:30, 2] = 2  # vessel 2, empty
    for split, n in (("Train", n_train), ("Test", n_test)):
        for i in range(n):
            write(root / "Simple" / split / "Image" / f"{split}{i}.jpg", noise_image(h, w, i))
            write(root / "Simple" / split / "Instance" / f"{split}{i}.png", ann)


def rle_compressed(mask: np.ndarray) -> str:
    """COCO compressed RLE counts of a (H, W) bool mask, as a JSON file holds them."""
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def rle_counts(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major, as COCO
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], change])).tolist()


def masks_as_set(masks: np.ndarray) -> set[bytes]:
    return {m.tobytes() for m in masks}


# ----------------------------------------------------------------------------- readers


def test_labpics_merge_values():
    ann = np.zeros((2, 4, 3), np.uint8)
    ann[0, 0] = (1, 0, 1)  # material 1 in vessel 1 -> material wins
    ann[0, 1] = (3, 0, 1)
    ann[0, 2] = (0, 0, 1)  # vessel 1 only -> 1 + max material (3)
    ann[0, 3] = (0, 0, 2)
    ann[1, 0] = (0, 7, 0)  # channel 1 is not an instance
    out = data.labpics_merge(ann)
    assert out.dtype == np.int32
    assert out.tolist() == [[1, 3, 4, 5], [0, 0, 0, 0]]


def test_labpics_merge_over_255_distinct():
    ann = np.zeros((1, 400, 3), np.uint8)
    ann[0, :200, 0] = np.arange(1, 201)  # 200 materials
    ann[0, 200:, 2] = np.repeat(np.arange(1, 101), 2)  # 100 vessels
    out = data.labpics_merge(ann)
    ids = np.unique(out)
    assert len(ids) == 300 and ids.min() == 1 and ids.max() == 300


def test_labpics_reader(tmp_path):
    make_labpics(tmp_path)
    assert data.detect_format(tmp_path) == "labpics"
    recs = data.find_records(tmp_path, "train")
    assert [r.image.name for r in recs] == ["Train0.jpg", "Train1.jpg"]
    assert all(r.format == "labpics" and r.annotation.suffix == ".png" for r in recs)
    s = data.read_sample(recs[0], max_side=32, min_area=1)
    assert s.image.shape == (24, 32, 3) and s.masks.shape == (3, 24, 32)
    exp = np.zeros((3, 24, 32), bool)
    exp[0, 10:20, 2:14] = True  # material
    exp[1, 2:10, 2:14] = True  # vessel 1 above the material
    exp[2, 2:20, 18:30] = True  # vessel 2
    assert masks_as_set(s.masks) == masks_as_set(exp)
    # the Simple/ folder itself is accepted too
    assert len(data.find_records(tmp_path / "Simple", "train")) == 2


def test_labpics_splits_and_complex(tmp_path):
    make_labpics(tmp_path, n_train=2, n_test=1)
    write(tmp_path / "Complex" / "Train" / "Image" / "c.jpg", noise_image(24, 32))
    write(tmp_path / "Complex" / "Train" / "Instance" / "c.png", np.ones((24, 32, 3), np.uint8))
    assert [r.image.name for r in data.find_records(tmp_path, "test")] == ["Test0.jpg"]
    assert [r.image.name for r in data.find_records(tmp_path, "val")] == ["Test0.jpg"]
    assert len(data.find_records(tmp_path, "train")) == 2
    assert len(data.find_records(tmp_path, "train", complex=True)) == 3
    with pytest.raises(ValueError, match="split"):
        data.find_records(tmp_path, "bogus")


def test_folder_8bit_masks(tmp_path):
    labs = make_folder(tmp_path, 1)
    assert data.detect_format(tmp_path) == "folder"
    rec = data.find_records(tmp_path, "all")[0]
    s = data.read_sample(rec, max_side=30, min_area=1)
    assert s.image.shape == (20, 30, 3)
    assert np.array_equal(s.image, cv2.imread(str(rec.image))[..., ::-1])
    assert masks_as_set(s.masks) == masks_as_set(np.stack([labs[0] == 1, labs[0] == 2]))


def test_folder_16bit_over_255_instances(tmp_path):
    lab = blocks_label(40, 40, 300)
    write(tmp_path / "images" / "a.png", noise_image(40, 40))
    write(tmp_path / "masks" / "a.png", lab)
    lm = data.read_label_map(tmp_path / "masks" / "a.png")
    assert lm.dtype == np.int32 and lm.max() == 300
    s = data.read_sample(data.find_records(tmp_path, "all")[0], max_side=40, min_area=1)
    assert s.masks.shape == (300, 40, 40)
    assert (s.masks.sum((1, 2)) == 4).all()
    assert s.masks.sum(0).max() == 1  # disjoint: nothing merged


def test_palette_label_png_gives_indices(tmp_path):
    lab = np.zeros((10, 10), np.uint8)
    lab[:5] = 1
    lab[5:, :3] = 2
    im = Image.fromarray(lab, mode="P")
    im.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "p.png")
    assert np.array_equal(data.read_label_map(tmp_path / "p.png"), lab)


def coco_fixture(tmp_path: Path, h: int = 12, w: int = 16) -> tuple[Path, list[np.ndarray]]:
    """COCO JSON with a polygon, uncompressed RLE, compressed RLE and a crowd region."""
    rng = np.random.default_rng(1)
    rle_u = np.zeros((h, w), bool)
    rle_u[6:10, 1:5] = True
    rle_c = rng.random((h, w)) > 0.7  # irregular, so long runs and diffs get exercised
    rle_c[:6] = False
    poly = np.zeros((h, w), bool)
    poly[1:4, 6:12] = True  # pixel edges: x 6..12, y 1..4
    anns = [
        {"id": 1, "image_id": 1, "iscrowd": 0, "segmentation": [[6, 1, 12, 1, 12, 4, 6, 4]]},
        {
            "id": 2,
            "image_id": 1,
            "iscrowd": 0,
            "segmentation": {"size": [h, w], "counts": rle_counts(rle_u)},
        },
        {
            "id": 3,
            "image_id": 1,
            "iscrowd": 0,
            "segmentation": {"size": [h, w], "counts": rle_compressed(rle_c)},
        },
        {
            "id": 4,
            "image_id": 1,
            "iscrowd": 1,
            "segmentation": {"size": [h, w], "counts": rle_counts(~rle_c)},
        },
    ]
    js = {
        "images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }
    write(tmp_path / "images" / "a.png", noise_image(h, w))
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances.json"
    path.write_text(json.dumps(js))
    return path, [poly, rle_u, rle_c]


def test_coco_polygon_rle_crowd(tmp_path):
    path, expected = coco_fixture(tmp_path)
    assert data.detect_format(path) == "coco" and data.detect_format(tmp_path) == "coco"
    recs = data.find_records(path, "all")
    assert len(recs) == 1 and recs[0].image == tmp_path / "images" / "a.png"
    s = data.read_sample(recs[0], max_side=16, min_area=1)
    assert s.masks.shape == (3, 12, 16)  # crowd region not an instance
    for got, exp in zip(s.masks, expected, strict=True):
        assert np.array_equal(got, exp)


def test_coco_split_files_and_image_dir(tmp_path):
    (tmp_path / "annotations").mkdir()
    for split, names in (("train", ["t0.png", "t1.png"]), ("val", ["v0.png"])):
        ims = [{"id": i, "file_name": n, "width": 8, "height": 6} for i, n in enumerate(names)]
        anns = [
            {"id": i, "image_id": i, "iscrowd": 0, "segmentation": [[1, 1, 5, 1, 5, 4]]}
            for i in range(len(names))
        ]
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": ims, "annotations": anns})
        )
        for n in names:  # standard COCO: root/train2017/, root/val2017/
            write(tmp_path / f"{split}2017" / n, noise_image(6, 8))
    assert image_names(data.find_records(tmp_path, "train")) == ["t0.png", "t1.png"]
    assert [r.image for r in data.find_records(tmp_path, "test")] == [
        tmp_path / "val2017" / "v0.png"
    ]
    assert len(data.load_split(tmp_path, "train", max_side=8)) == 2


def write_coco(path: Path, names: list[str], anns: list[dict] | None = None) -> Path:
    """COCO JSON of 8x6 images `names` (written to images/ beside it), by default one
    polygon instance each."""
    ims = [{"id": i, "file_name": n, "width": 8, "height": 6} for i, n in enumerate(names)]
    if anns is None:
        anns = [
            {"id": i, "image_id": i, "segmentation": [[1, 1, 5, 1, 5, 4]]}
            for i in range(len(names))
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": ims, "annotations": anns}))
    for n in names:
        write(path.parent / "images" / n, noise_image(6, 8))
    return path


def image_names(records: list[Record]) -> list[str]:
    return [r.image.name for r in records]


def test_coco_unusable_annotations_skipped_and_named(tmp_path):
    h, w = 6, 8
    ok = np.zeros((h, w), bool)
    ok[1:4, 1:5] = True
    rles = {
        8: [5, 10],  # covers 15 of the 48 pixels
        9: rle_compressed(ok[:, :-1]),  # a 6x7 mask's runs: 42 pixels
        10: [5, 100],  # past the end
    }
    anns = [{"id": 1, "image_id": 0, "segmentation": {"size": [h, w], "counts": rle_counts(ok)}}]
    anns += [{"id": 7, "image_id": 0, "bbox": [0, 0, 3, 3]}]  # no segmentation
    anns += [
        {"id": i, "image_id": 0, "segmentation": {"size": [h, w], "counts": c}}
        for i, c in rles.items()
    ]
    js = write_coco(tmp_path / "instances.json", ["a.png"], anns)
    rec = data.find_records(js, "all")[0]
    pat = (
        r"a\.png: skipped annotation id 7: no segmentation \(bounding box only\); "
        r"annotation id 8: RLE runs cover 15 pixels, not the image.s 6x8 = 48; "
        r"annotation id 9: RLE runs cover 42 pixels.*; "
        r"annotation id 10: RLE runs cover 105 pixels"
    )
    with pytest.warns(UserWarning, match=pat):
        s = data.read_sample(rec, max_side=8, min_area=1)
    assert len(s.masks) == 1 and np.array_equal(s.masks[0], ok)
    text = data.summarize(js)
    assert "min 1 / mean 1.0 / max 1" in text and "skipped: 0 files, 4 annotations" in text
    assert "a.png: annotation id 7: no segmentation (bounding box only)" in text
    assert "a.png: annotation id 9: RLE runs cover 42 pixels, not the image's 6x8 = 48" in text


def test_coco_trainval_file_is_one_split(tmp_path):
    ann = tmp_path / "annotations"
    write_coco(ann / "instances_trainval2017.json", [f"a{i}.png" for i in range(5)])
    write_coco(ann / "instances_test2017.json", ["b0.png"])
    assert image_names(data.find_records(tmp_path, "train")) == [f"a{i}.png" for i in range(5)]
    assert image_names(data.find_records(tmp_path, "test")) == ["b0.png"]
    text = data.summarize(tmp_path)
    assert "instances_trainval2017.json -> train" in text
    assert "instances_test2017.json -> test" in text
    # a trainval file alone is no test split: its images are held out 80/20 by name
    (ann / "instances_test2017.json").unlink()
    train, test = (image_names(data.find_records(tmp_path, s)) for s in ("train", "test"))
    assert len(train) == 4 and len(test) == 1 and not set(train) & set(test)
    assert "instances_trainval2017.json -> 80% train / 20% test by name hash" in data.summarize(
        tmp_path
    )


@pytest.mark.parametrize("text", ["[]", '{"annotations": []}', "{not json"])
def test_broken_coco_json_is_an_error(tmp_path, capsys, text):
    js = tmp_path / "instances.json"
    js.write_text(text)
    with pytest.raises(DataError, match=r"instances\.json: not a readable COCO"):
        data.find_records(js)
    assert data.main([str(js)]) == 1
    err = capsys.readouterr().err
    assert "instances.json: not a readable COCO instances JSON" in err


# ----------------------------------------------------------------------------- splits


def test_folder_held_out_split_deterministic(tmp_path):
    make_folder(tmp_path / "a", 10)
    make_folder(tmp_path / "b", 10)
    tr = [r.image.name for r in data.find_records(tmp_path / "a", "train")]
    te = [r.image.name for r in data.find_records(tmp_path / "a", "test")]
    assert len(te) == 2 and len(tr) == 8 and not set(tr) & set(te)
    # same names -> same split, whatever the folder is called
    assert [r.image.name for r in data.find_records(tmp_path / "b", "test")] == te
    assert [r.image.name for r in data.find_records(tmp_path / "a", "val")] == te
    make_folder(tmp_path / "c", 2)
    assert len(data.find_records(tmp_path / "c", "test")) == 1


def test_folder_train_test_subdirs(tmp_path):
    make_folder(tmp_path / "train", 3)
    make_folder(tmp_path / "val", 2)
    assert data.detect_format(tmp_path) == "folder"
    assert len(data.find_records(tmp_path, "train")) == 3
    recs = data.find_records(tmp_path, "test")
    assert len(recs) == 2 and all(r.image.parent == tmp_path / "val" / "images" for r in recs)


def test_folder_train_without_test_holds_out_20_percent(tmp_path):
    make_folder(tmp_path / "train", 10)
    train, test = (image_names(data.find_records(tmp_path, s)) for s in ("train", "test"))
    assert len(train) == 8 and len(test) == 2 and not set(train) & set(test)
    # the same images as when the folder itself is given
    assert image_names(data.find_records(tmp_path / "train", "test")) == test
    assert "train/images -> 80% train / 20% test by name hash" in data.summarize(tmp_path)


# ----------------------------------------------------------------------------- samples


def test_sample_resize_points_determinism(tmp_path):
    make_folder(tmp_path, 1)
    rec = data.find_records(tmp_path, "all")[0]
    s = data.read_sample(rec, max_side=60, min_area=1, seed=3)
    assert s.image.shape == (40, 60, 3) and s.image.dtype == np.uint8
    assert s.masks.shape == (2, 40, 60) and s.masks.dtype == bool
    assert s.points.shape == (2, 2) and s.points.dtype == np.float32
    assert s.name == str(rec.image)
    for m, (x, y) in zip(s.masks, s.points, strict=True):
        assert m[int(y), int(x)]
    assert sorted(s.masks.sum((1, 2)).tolist()) == [6 * 9 * 4, 8 * 13 * 4]  # 2x upscale
    again = data.read_sample(rec, max_side=60, min_area=1, seed=3)
    assert np.array_equal(again.points, s.points) and np.array_equal(again.image, s.image)
    others = [data.read_sample(rec, max_side=60, min_area=1, seed=k).points for k in range(4, 8)]
    assert any(not np.array_equal(p, s.points) for p in others)
    down = data.read_sample(rec, max_side=15, min_area=1)
    assert down.image.shape == (10, 15, 3) and down.masks.shape[1:] == (10, 15)


def test_sample_min_area_drops_small(tmp_path):
    lab = np.zeros((20, 20), np.uint8)
    lab[0:2, 0:2] = 1  # 4 px
    lab[5:15, 5:15] = 2  # 100 px
    write(tmp_path / "images" / "a.png", noise_image(20, 20))
    write(tmp_path / "masks" / "a.png", lab)
    rec = data.find_records(tmp_path, "all")[0]
    assert len(data.read_sample(rec, max_side=20, min_area=4).masks) == 2
    assert len(data.read_sample(rec, max_side=20, min_area=5).masks) == 1
    # area counted after resizing: the 4 px block is 16 px at 2x
    assert len(data.read_sample(rec, max_side=40, min_area=16).masks) == 2


def test_sample_points_inside_and_deterministic():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 30, 40, generator=g) > 0.9
    masks[0] = False
    masks[0, 29, 39] = True  # single pixel in a corner
    p1 = data.sample_points(masks, torch.Generator().manual_seed(5))
    p2 = data.sample_points(masks, torch.Generator().manual_seed(5))
    assert p1.shape == (6, 2) and p1.dtype == torch.float32 and p1.device == masks.device
    assert torch.equal(p1, p2)
    assert p1[0].tolist() == [39.0, 29.0]
    for m, (x, y) in zip(masks, p1.long(), strict=True):
        assert m[y, x]
    # roughly uniform: over many draws every pixel of a small mask gets picked
    small = torch.zeros(2000, 5, 5, dtype=torch.bool)
    small[:, 1:3, 2:4] = True
    pts = data.sample_points(small, torch.Generator().manual_seed(1)).long()
    assert len({tuple(p) for p in pts.tolist()}) == 4
    assert data.sample_points(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 2)
    with pytest.raises(ValueError, match="empty"):
        data.sample_points(torch.zeros(2, 4, 4, dtype=torch.bool))


@pytest.mark.cuda
def test_sample_points_cuda_matches_cpu():
    masks = torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    cpu = data.sample_points(masks, torch.Generator().manual_seed(2))
    gpu = data.sample_points(masks.cuda(), torch.Generator().manual_seed(2))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


def test_dataset_dataloader_workers(tmp_path):
    make_folder(tmp_path, 5)
    write(tmp_path / "masks" / "im04.png", np.zeros((20, 30), np.uint8))  # no instances
    ds = data.SegDataset(data.find_records(tmp_path, "all"), max_side=30, min_area=1, seed=7)
    assert len(ds) == 5 and len(ds[4].masks) == 0
    direct = {ds[i].name: ds[i].points for i in range(5)}
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=list)
    got = [s for b in loader for s in b]
    assert len(got) == 5
    for s in got:  # same points in workers as in this process
        assert np.array_equal(s.points, direct[s.name])


# ----------------------------------------------------------------------------- image variants


def test_read_rgb_gray_rgba_16bit(tmp_path):
    gray = np.full((4, 5), 77, np.uint8)
    out = data.read_rgb(write(tmp_path / "g.png", gray))
    assert out.shape == (4, 5, 3) and (out == 77).all()
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0
    out = data.read_rgb(write(tmp_path / "a.png", bgra))
    assert out.shape == (4, 5, 3) and out[0, 0].tolist() == [30, 20, 10]
    deep = np.zeros((4, 5, 3), np.uint16)
    deep[..., 2] = 65535  # red in BGR
    deep[..., 1] = 257 * 100
    out = data.read_rgb(write(tmp_path / "d.png", deep))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [255, 100, 0]
    gray16 = np.full((4, 5), 257 * 9, np.uint16)
    assert (data.read_rgb(write(tmp_path / "g16.png", gray16)) == 9).all()


def test_exif_orientation_applied_to_image_not_mask(tmp_path):
    h, w = 20, 40
    pix = np.zeros((h, w, 3), np.uint8)
    pix[:, : w // 2] = 255  # left half white in the stored pixel grid
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    (tmp_path / "images").mkdir()
    Image.fromarray(pix).save(tmp_path / "images" / "a.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "images" / "a.jpg") as im:  # the tag really is there
        assert im.getexif()[0x0112] == 6
    img = data.read_rgb(tmp_path / "images" / "a.jpg")
    assert np.array_equal(img, cv2.imread(str(tmp_path / "images" / "a.jpg"))[..., ::-1])
    assert img.shape == (w, h, 3)  # turned clockwise: the white half is now on top
    assert img[:15].mean() > 200 and img[25:].mean() < 50
    lab = np.zeros((w, h), np.uint8)  # drawn on the image as displayed
    lab[: w // 2] = 1
    write(tmp_path / "masks" / "a.png", lab)
    rec = data.find_records(tmp_path, "all")[0]
    assert data.check_record(rec) is None
    s = data.read_sample(rec, max_side=w, min_area=1)
    assert s.image[s.masks[0]].mean() > 200  # the mask sits on the white half
    assert data.read_label_map(rec.annotation).shape == (w, h)  # label PNGs are not turned
    write(tmp_path / "masks" / "a.png", np.ones((h, w), np.uint8))  # the stored grid's size
    assert "is 20x40 but annotation" in data.check_record(rec)
    with pytest.raises(DataError, match="size mismatch"):
        data.read_sample(rec)


def test_colour_label_png_one_instance_per_colour(tmp_path):
    bgr = np.zeros((20, 30, 4), np.uint8)
    bgr[..., 3] = 255
    colours = [(0, 0, 255), (0, 255, 0), (0, 255, 255), (255, 0, 0)]  # red green yellow blue
    for k, c in enumerate(colours):
        bgr[2:8, 7 * k : 7 * k + 5, :3] = c
    bgr[15:, :, 3] = 128  # alpha is not part of the colour
    write(tmp_path / "images" / "a.png", noise_image(20, 30))
    write(tmp_path / "masks" / "a.png", bgr)
    lab = data.read_label_map(tmp_path / "masks" / "a.png")
    assert lab.dtype == np.int32 and sorted(np.unique(lab).tolist()) == [0, 1, 2, 3, 4]
    s = data.read_sample(data.find_records(tmp_path, "all")[0], max_side=30, min_area=1)
    assert len(s.masks) == 4 and (s.masks.sum((1, 2)) == 30).all()
    # the same file through the LabPics reader: channel 2 = vessels, channel 0 = materials
    merged = data.read_label_map(tmp_path / "masks" / "a.png", labpics=True)
    assert len(np.unique(merged)) - 1 == 2
    assert "min 4 / mean 4.0 / max 4" in data.summarize(tmp_path)


def test_resize_nearest_exact_any_dtype():
    ids = np.arange(12, dtype=np.int32).reshape(3, 4) * 70000  # ids past uint16
    up = data.resize_nearest(ids, (6, 8))
    assert up.dtype == np.int32 and np.array_equal(up, ids.repeat(2, 0).repeat(2, 1))
    assert np.array_equal(data.resize_nearest(up, (3, 4)), ids)
    masks = np.random.default_rng(0).random((5, 7, 3)) > 0.5  # (h, w, n) bool
    out = data.resize_nearest(masks, (10, 14))
    assert out.dtype == bool and out.shape == (10, 14, 3)
    assert np.array_equal(out[::2, ::2], masks)
    assert np.array_equal(data.resize_longest(ids, 8, nearest=True), up)


# ----------------------------------------------------------------------------- bad inputs


def test_missing_path_names_path_and_layouts(tmp_path):
    bad = tmp_path / "nowhere"
    for fn in (data.detect_format, data.find_records, data.load_split):
        with pytest.raises(DataError, match="nowhere") as e:
            fn(bad)
        assert all(k in str(e.value) for k in ("labpics", "folder", "coco", "Simple/Train"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no known dataset layout"):
        data.detect_format(tmp_path / "empty")


def test_no_pairs(tmp_path):
    write(tmp_path / "images" / "a.png", noise_image(4, 4))
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no image-annotation pairs"):
        data.find_records(tmp_path, "all")


def test_zero_byte_image(tmp_path):
    make_folder(tmp_path, 4)
    (tmp_path / "images" / "im01.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"im01\.png.*zero-byte"):
        data.read_rgb(tmp_path / "images" / "im01.png")
    with pytest.warns(UserWarning, match=r"im01\.png.*zero-byte"):
        ds = data.load_split(tmp_path, "all", max_side=30)
    assert len(ds) == 3


def test_truncated_images(tmp_path):
    img = noise_image(64, 64)
    for ext in (".jpg", ".png"):
        full = write(tmp_path / f"full{ext}", img)
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
        assert data.read_rgb(full).shape == (64, 64, 3)
        with pytest.raises(DataError, match=rf"cut\{ext}.*truncated"):
            data.read_rgb(cut)
        rec = Record(cut, cut, "folder")
        assert "truncated" in data.check_record(rec)


def test_corrupt_annotation(tmp_path):
    make_folder(tmp_path, 3)
    (tmp_path / "masks" / "im02.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage" * 10 + b"IEND")
    rec = [r for r in data.find_records(tmp_path, "all") if r.image.stem == "im02"][0]
    with pytest.raises(DataError, match=r"masks.im02\.png"):
        data.read_sample(rec)
    with pytest.warns(UserWarning, match=r"masks.im02\.png"):
        ds = data.load_split(tmp_path, "all")
    assert len(ds) == 2
    with pytest.warns(UserWarning, match=r"im02\.png"):
        assert data.SegDataset([rec])[0] is None


def test_missing_annotation(tmp_path):
    make_folder(tmp_path, 3)
    (tmp_path / "masks" / "im00.png").unlink()
    rec = data.find_records(tmp_path, "all")[0]
    assert rec.annotation == tmp_path / "masks" / "im00.png"
    with pytest.raises(DataError, match=r"missing annotation.*im00\.png"):
        data.read_sample(rec)
    with pytest.warns(UserWarning, match=r"masks.im00\.png: missing annotation"):
        assert len(data.load_split(tmp_path, "all")) == 2


def test_size_mismatch_names_both(tmp_path):
    make_folder(tmp_path, 3)
    write(tmp_path / "masks" / "im01.png", np.ones((20, 31), np.uint8))
    pat = r"images.im01\.png is 30x20.*masks.im01\.png is 31x20"
    with pytest.warns(UserWarning, match=pat):
        ds = data.load_split(tmp_path, "all")
    assert len(ds) == 2
    rec = [r for r in data.find_records(tmp_path, "all") if r.image.stem == "im01"][0]
    with pytest.raises(DataError, match=pat):
        data.read_sample(rec)


def test_most_files_bad(tmp_path):
    make_folder(tmp_path, 3)
    for i in (0, 1):
        (tmp_path / "images" / f"im{i:02d}.png").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="2 of 3"):
        data.load_split(tmp_path, "all")


# ----------------------------------------------------------------------------- demo, summary, CLI


def test_make_demo_deterministic_and_loads(tmp_path):
    a = data.make_demo(tmp_path / "a", n_train=3, n_test=2, seed=1)
    b = data.make_demo(tmp_path / "b", n_train=3, n_test=2, seed=1)
    c = data.make_demo(tmp_path / "c", n_train=3, n_test=2, seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 10
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    ds = data.load_split(a, "train", max_side=256)
    assert len(ds) == 3 and len(data.load_split(a, "test", max_side=256)) == 2
    for s in (ds[i] for i in range(3)):
        assert max(s.image.shape[:2]) == 256 and len(s.masks) >= 2
        assert all(m[int(y), int(x)] for m, (x, y) in zip(s.masks, s.points, strict=True))
    ann = cv2.imread(str(a / "Simple/Train/Instance/demo_train_000.png"), cv2.IMREAD_UNCHANGED)
    assert ann[..., 0].max() >= 1 and ann[..., 2].max() >= 1 and ann[..., 1].max() == 0


def test_summarize_and_cli(tmp_path, capsys):
    make_folder(tmp_path / "d", 5)
    (tmp_path / "d" / "images" / "im03.png").write_bytes(b"")
    text = data.summarize(tmp_path / "d")
    assert "folder" in text and "train:   3 images" in text and "test:    1 images" in text
    assert "min 2 / mean 2.0 / max 2" in text and "im03.png: zero-byte" in text
    assert data.main([str(tmp_path / "d")]) == 0
    assert "folder layout" in capsys.readouterr().out
    assert data.main([str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err
    assert (
        data.main(["--make-demo", str(tmp_path / "demo"), "--n-train", "1", "--n-test", "1"]) == 0
    )
    assert (tmp_path / "demo/Simple/Test/Image/demo_test_000.jpg").is_file()
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(root / "data.py"), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "nope" in r.stderr and "layouts looked for" in r.stderr


def test_summary_lists_images_without_instances(tmp_path):
    make_folder(tmp_path, 5)
    write(tmp_path / "masks" / "im02.png", np.zeros((20, 30), np.uint8))
    text = data.summarize(tmp_path)
    assert "1 images without instances (not trained on): im02.png" in text
    assert "min 0 /" in text


# ----------------------------------------------------------------------------- writers' layouts
# Each sample below is written the way its tool writes it (datumaro's COCO exporter for CVAT,
# Roboflow's COCO and YOLOv8 downloads, Ultralytics' data.yaml and label txt, labelme's JSON,
# Pascal VOC's palette PNGs and lists), and each image's instance count is checked exactly.


def counts(records: list[Record]) -> dict[str, int]:
    """Instances per image name (warnings about skipped annotations are tested apart)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {r.image.name: len(data.read_sample(r, 64, min_area=1).masks) for r in records}


def square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def cvat_coco(root: Path) -> Path:
    """A CVAT 'COCO 1.0' export as datumaro writes it: annotations/instances_default.json,
    images/default/, empty info and licenses, 'occluded' attributes, and every mask shape an
    uncompressed RLE with iscrowd 1."""
    h, w = 12, 16
    masks = {
        "a.jpg": [square(h, w, 1, 5, 1, 6), square(h, w, 6, 11, 8, 15)],
        "b.jpg": [square(h, w, 2, 9, 2, 9)],
    }
    js = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [{"id": 1, "name": "cell", "supercategory": ""}],
        "images": [],
        "annotations": [],
    }
    for i, name in enumerate(masks, 1):
        js["images"].append(
            {
                "id": i,
                "width": w,
                "height": h,
                "file_name": name,
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        write(root / "images" / "default" / name, noise_image(h, w, i))
        for m in masks[name]:
            seg = {"counts": rle_counts(m), "size": [h, w]}
            js["annotations"].append(
                {
                    "id": len(js["annotations"]) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "segmentation": seg,
                    "area": float(m.sum()),
                    "bbox": [0, 0, 1, 1],
                    "iscrowd": 1,
                    "attributes": {"occluded": False},
                }
            )
    # one polygon shape: CVAT writes those as polygons, iscrowd 0
    js["annotations"].append(
        {
            "id": 9,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[9.0, 1.0, 14.0, 1.0, 14.0, 4.0]],
            "area": 7.5,
            "bbox": [9, 1, 5, 3],
            "iscrowd": 0,
            "attributes": {"occluded": False},
        }
    )
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(js))
    return path


def test_cvat_coco_masks_are_crowd_named_and_used(tmp_path):
    cvat_coco(tmp_path)
    assert data.detect_format(tmp_path) == "coco"
    recs = data.find_records(tmp_path, "all")
    assert [r.image for r in recs] == [
        tmp_path / "images" / "default" / n for n in ("a.jpg", "b.jpg")
    ]
    assert counts(recs) == {"a.jpg": 1, "b.jpg": 0}  # by default only the polygon
    text = data.summarize(tmp_path)
    assert (
        "3 crowd (iscrowd=1) annotations skipped in 2 images (this looks like a CVAT export" in text
    )
    assert "--crowd-instances makes them instances" in text
    assert "a.jpg: crowd (iscrowd=1) annotation ids 1, 2" in text and "b.jpg: crowd" in text
    notes = data.load_split(tmp_path, "train").notes + data.load_split(tmp_path, "test").notes
    assert sum(int(n.split(": ")[1].split()[0]) for n in notes) == 3  # train.py prints these
    # the option: every mask shape is an instance, exactly as drawn
    recs = data.find_records(tmp_path, "all", crowd=True)
    assert counts(recs) == {"a.jpg": 3, "b.jpg": 1}
    s = data.read_sample(recs[1], max_side=16, min_area=1)
    assert np.array_equal(s.masks[0], square(12, 16, 2, 9, 2, 9))
    assert "3 crowd (iscrowd=1) annotations used as instances" in data.summarize(
        tmp_path, crowd=True
    )
    assert data.main([str(tmp_path), "--crowd-instances"]) == 0


def roboflow_coco(root: Path, split: str, n_instances: list[int]) -> None:
    """Roboflow's COCO download: ROOT/<split>/_annotations.coco.json, images beside it, ids
    from 0 and a category 0 that is the dataset's supercategory."""
    h, w = 16, 20
    js = {
        "info": {"year": "2022", "version": "1", "description": "Exported from roboflow.ai"},
        "licenses": [
            {"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}
        ],
        "categories": [
            {"id": 0, "name": "cells", "supercategory": "none"},
            {"id": 1, "name": "cell", "supercategory": "cells"},
        ],
        "images": [],
        "annotations": [],
    }
    for i, n in enumerate(n_instances):
        name = f"{split}{i}_jpg.rf.0a1b2c.jpg"
        js["images"].append({"id": i, "license": 1, "file_name": name, "height": h, "width": w})
        write(root / split / name, noise_image(h, w, i))
        for k in range(n):
            poly = [2.0 * k, 1.0, 2.0 * k + 1.5, 1.0, 2.0 * k + 1.5, 9.0, 2.0 * k, 9.0]
            js["annotations"].append(
                {
                    "id": len(js["annotations"]),
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [2 * k, 1, 1.5, 8],
                    "area": 12.0,
                    "segmentation": [poly],
                    "iscrowd": 0,
                }
            )
    (root / split / "_annotations.coco.json").write_text(json.dumps(js))


def test_roboflow_coco_layout_valid_is_validation(tmp_path):
    roboflow_coco(tmp_path, "train", [2, 1, 3])
    roboflow_coco(tmp_path, "valid", [4])
    roboflow_coco(tmp_path, "test", [1, 1])
    assert data.detect_format(tmp_path) == "coco"
    train, val = data.find_records(tmp_path, "train"), data.find_records(tmp_path, "val")
    assert counts(train) == {f"train{i}_jpg.rf.0a1b2c.jpg": n for i, n in enumerate([2, 1, 3])}
    assert counts(val) == {"valid0_jpg.rf.0a1b2c.jpg": 4}
    text = data.summarize(tmp_path)
    assert "train/_annotations.coco.json -> train" in text
    assert "valid/_annotations.coco.json -> test" in text
    assert "test/_annotations.coco.json -> not used" in text


VOC_PALETTE = [
    c
    for i in range(256)
    for c in [sum(((i >> (3 * b + s)) & 1) << (7 - b) for b in range(8)) for s in range(3)]
]


def voc_object_png(path: Path, boxes: list[tuple[int, int, int, int]], h: int, w: int) -> None:
    """A VOC SegmentationObject PNG: palette indices 1..N, a 255 'void' ring around each."""
    lab = np.zeros((h, w), np.uint8)
    for k, (y0, y1, x0, x1) in enumerate(boxes, 1):
        lab[y0:y1, x0:x1] = k
    ring = cv2.dilate((lab > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    lab[ring & (lab == 0)] = 255
    im = Image.fromarray(lab, mode="P")
    im.putpalette(VOC_PALETTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def test_voc_void_ring_is_no_instance(tmp_path):
    h, w = 20, 24
    objects = {
        "2007_000032": [(2, 8, 2, 9)],
        "2007_000039": [(2, 8, 2, 9), (11, 18, 12, 22)],
        "2007_000063": [(3, 15, 3, 20)],
    }
    for stem, boxes in objects.items():
        write(tmp_path / "JPEGImages" / f"{stem}.jpg", noise_image(h, w))
        voc_object_png(tmp_path / "SegmentationObject" / f"{stem}.png", boxes, h, w)
    sets = tmp_path / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n2007_000039\n")
    (sets / "val.txt").write_text("2007_000063\n")
    (sets / "trainval.txt").write_text("2007_000032\n2007_000039\n2007_000063\n")
    assert data.detect_format(tmp_path) == "voc"
    train = data.find_records(tmp_path, "train")
    assert counts(train) == {"2007_000032.jpg": 1, "2007_000039.jpg": 2}
    assert counts(data.find_records(tmp_path, "val")) == {"2007_000063.jpg": 1}
    s = data.read_sample(train[0], max_side=24, min_area=1)
    assert np.array_equal(s.masks[0], square(h, w, 2, 8, 2, 9))  # the object, not its ring
    assert counts(data.find_records(tmp_path, "train", ignore_index=-1)) == {
        "2007_000032.jpg": 2,
        "2007_000039.jpg": 3,
    }
    assert "ImageSets/Segmentation/train.txt -> train" in data.summarize(tmp_path)
    # no lists (labelme2voc writes none): every SegmentationObject PNG, held out by name
    for p in sets.iterdir():
        p.unlink()
    assert len(data.find_records(tmp_path, "all")) == 3
    # the same palette PNG in an images/ + masks/ folder
    write(tmp_path / "f" / "images" / "a.jpg", noise_image(h, w))
    voc_object_png(tmp_path / "f" / "masks" / "a.png", objects["2007_000039"], h, w)
    assert counts(data.find_records(tmp_path / "f", "all")) == {"a.jpg": 2}
    assert "max 2" in data.summarize(tmp_path / "f")
    with pytest.raises(ValueError, match="ignore-index"):
        data.find_records(tmp_path / "f", ignore_index=256)


def yolo_line(poly: list[float]) -> str:
    return "0 " + " ".join(f"{v:.6f}" for v in poly)


def test_yolo_ultralytics_layout(tmp_path):
    """Ultralytics: data.yaml with path/train/val/names, images/{train,val}, labels/{train,val},
    one normalized polygon per line; a missing label file is a background image."""
    h, w = 16, 32
    (tmp_path / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cell\n"
    )
    labels = {
        "train/a": [
            yolo_line([0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75]),
            yolo_line([0.0, 0.0, 0.125, 0.0, 0.125, 0.25]),
            "0 0.5 0.5 0.2 0.2",
        ],
        "train/b": None,
        "val/c": [yolo_line([0.5, 0.5, 1.0, 0.5, 1.0, 1.0])],
    }
    for stem, lines in labels.items():
        write(tmp_path / "images" / f"{stem}.jpg", noise_image(h, w))
        if lines is not None:
            (tmp_path / "labels" / stem).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    for root in (tmp_path, tmp_path / "data.yaml"):
        assert data.detect_format(root) == "yolo"
        train = data.find_records(root, "train")
        assert counts(train) == {"a.jpg": 2, "b.jpg": 0}
        assert counts(data.find_records(root, "val")) == {"c.jpg": 1}
    with pytest.warns(UserWarning, match=r"a\.jpg: skipped line 3: a box"):
        s = data.read_sample(train[0], max_side=32, min_area=1)
    assert any(np.array_equal(m, square(h, w, 4, 12, 8, 24)) for m in s.masks)  # scaled by w, h
    text = data.summarize(tmp_path)
    assert (
        "data.yaml train: images/train -> train" in text
        and "data.yaml val: images/val -> test" in text
    )
    assert "b.jpg" in text.split("images without instances")[1]
    assert "a.jpg: line 3: a box (class x y w h), no polygon" in text
    # without a data.yaml: images/{train,val} + labels/{train,val} by their folder names
    (tmp_path / "data.yaml").unlink()
    assert counts(data.find_records(tmp_path, "val")) == {"c.jpg": 1}


def test_yolo_roboflow_layout(tmp_path):
    """Roboflow's YOLOv8 download: data.yaml names ../train/images, ../valid/images,
    ../test/images (Ultralytics drops the ../), each split with images/ and labels/."""
    (tmp_path / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        "nc: 1\nnames: ['cell']\n"
    )
    lines = ["0 0.1 0.1 0.4 0.1 0.4 0.4", "0 0.5 0.5 0.9 0.5 0.9 0.9", "0 0.1 0.6 0.3 0.6 0.3 0.9"]
    labels = {"train0": lines[:2], "train1": lines[2:], "valid0": lines, "test0": lines[:1]}
    for stem, rows in labels.items():
        split = stem[:-1]
        write(tmp_path / split / "images" / f"{stem}_jpg.rf.ab12.jpg", noise_image(10, 12))
        (tmp_path / split / "labels").mkdir(parents=True, exist_ok=True)
        (tmp_path / split / "labels" / f"{stem}_jpg.rf.ab12.txt").write_text("\n".join(rows))
    assert counts(data.find_records(tmp_path, "train")) == {
        "train0_jpg.rf.ab12.jpg": 2,
        "train1_jpg.rf.ab12.jpg": 1,
    }
    assert counts(data.find_records(tmp_path, "val")) == {"valid0_jpg.rf.ab12.jpg": 3}
    assert "data.yaml test: test/images -> not used" in data.summarize(tmp_path)


def labelme_shape(label, points, shape_type="polygon", group_id=None, mask=None) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": group_id,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": mask,
    }


def test_labelme_shapes_and_groups(tmp_path):
    """labelme 5: x.json beside x.jpg, imageData null; polygon, rectangle, circle and mask
    shapes are regions, shapes with one label and group_id one instance, a line none."""
    h, w = 24, 32
    patch = io_png(np.ones((3, 4), np.uint8))
    shapes = [
        labelme_shape("cell", [[1, 1], [6, 1], [6, 5]]),
        labelme_shape("cell", [[2, 12], [9, 16]], "rectangle"),
        labelme_shape("cell", [[20, 6], [20, 9]], "circle"),
        labelme_shape("cell", [[12, 1], [16, 1], [16, 4]], group_id=1),
        labelme_shape("cell", [[12, 8], [16, 8], [16, 10]], group_id=1),  # same instance
        labelme_shape("debris", [[12, 14], [16, 14], [16, 16]], group_id=1),  # another label
        labelme_shape("crack", [[0, 20], [30, 22]], "line"),
        labelme_shape("cell", [[26.0, 18.0], [29.0, 20.0]], "mask", mask=patch),
    ]
    for stem, shp in (("a", shapes), ("b", [])):
        write(tmp_path / f"{stem}.jpg", noise_image(h, w))
        doc = {
            "version": "5.5.0",
            "flags": {},
            "shapes": shp,
            "imagePath": f"{stem}.jpg",
            "imageData": None,
            "imageHeight": h,
            "imageWidth": w,
        }
        (tmp_path / f"{stem}.json").write_text(json.dumps(doc, indent=2))
    write(tmp_path / "c.jpg", noise_image(h, w))  # not annotated: no JSON
    assert data.detect_format(tmp_path) == "labelme"
    recs = data.find_records(tmp_path, "all")
    assert counts(recs) == {"a.jpg": 6, "b.jpg": 0}
    with pytest.warns(UserWarning, match=r"a\.jpg: skipped shape 6 \(line\): not a region"):
        s = data.read_sample(recs[0], max_side=32, min_area=1)
    assert masks_as_set(s.masks) >= {
        square(h, w, 12, 17, 2, 10).tobytes(),
        square(h, w, 18, 21, 26, 30).tobytes(),
    }
    assert any(m[1, 12] and m[9, 15] for m in s.masks)  # the grouped polygons: one mask
    # a labelme file is no COCO file
    with pytest.raises(DataError, match="labelme file"):
        data.find_records(tmp_path / "a.json")
    # a JSON whose size is not its image's: that image is skipped, named
    doc = json.loads((tmp_path / "b.json").read_text()) | {"imageWidth": 31}
    (tmp_path / "b.json").write_text(json.dumps(doc))
    assert "b.jpg is 32x24 but" in data.summarize(tmp_path)


def io_png(a: np.ndarray) -> str:
    import base64

    ok, buf = cv2.imencode(".png", a)
    return base64.b64encode(buf.tobytes()).decode()


@pytest.mark.parametrize(
    "js, expect",
    [
        ([{"id": 1}], r"it holds a JSON list, .*Label Studio"),
        ({"images": {"id": 1}}, r"it needs an 'images' list and an 'annotations' list"),
        ({"images": [[1, "a.png"]]}, r"images\[0\] needs an 'id'"),
        ({"images": [{"id": 3}]}, r"image id 3: 'file_name' must be a string, got None"),
        (  # width 0: unknown, as datumaro writes it
            {"images": [{"id": 3, "file_name": "a.png", "width": 0, "height": 2.5}]},
            r"image id 3: 'height' must be a positive integer, got 2.5",
        ),
        (
            {"images": [{"id": 3, "file_name": "a.png", "width": "640"}]},
            r"image id 3: 'width' must be a positive integer, got '640'",
        ),
        (
            {"images": [{"id": 3, "file_name": "a.png"}], "annotations": [7]},
            r"annotations\[0\] must be an object, got 7",
        ),
        ({"shapes": [], "imagePath": "a.png"}, r"it is a labelme file"),
    ],
)
def test_coco_errors_name_field_and_entry(tmp_path, js, expect):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(js))
    with pytest.raises(
        DataError, match=r"instances\.json: not a readable COCO instances JSON: " + expect
    ):
        data.find_records(path, "all")


def test_coco_missing_image_names_folders_searched(tmp_path):
    js = write_coco(tmp_path / "annotations" / "instances_default.json", ["a.png", "b.png"])
    (js.parent / "images" / "b.png").unlink()
    text = data.summarize(tmp_path)
    assert "b.png: missing image (looked in " in text
    assert str(tmp_path / "images" / "default") in text


def test_coco_bad_annotation_types_named(tmp_path):
    anns = [
        {"id": 1, "image_id": 0, "segmentation": [[1, 1, 5, 1, 5, 4]]},
        {"id": 2, "image_id": 0, "segmentation": [["a", 1, 5, 1, 5, 4]]},
        {"id": 3, "image_id": 0, "segmentation": {"size": [6, 8], "counts": [1.5, 2]}},
        {"id": 4, "image_id": 7, "segmentation": [[1, 1, 5, 1, 5, 4]]},
    ]
    js = write_coco(tmp_path / "instances.json", ["a.png"], anns)
    with pytest.warns(
        UserWarning,
        match=r"skipped 1 annotations whose image_id is in no 'images' entry: "
        r"annotation id 4 \(image_id 7\)",
    ):
        text = data.summarize(js)
    assert "annotation id 2: 'segmentation' is a list but not of polygons" in text
    assert "annotation id 3: RLE 'counts' must be a list of run lengths" in text


def test_no_usable_image_exits_nonzero(tmp_path, capsys):
    make_folder(tmp_path, 3)
    for i in range(3):
        write(tmp_path / "masks" / f"im{i:02d}.png", np.zeros((20, 30), np.uint8))
    assert data.main([str(tmp_path)]) == 1
    assert "no usable training image" in capsys.readouterr().err


def test_recognised_but_unsupported_layout_says_what(tmp_path):
    (tmp_path / "annotations.xml").write_text("<annotations><version>1.1</version></annotations>")
    with pytest.raises(DataError, match="looks like CVAT's XML: export the task as 'COCO 1.0'"):
        data.detect_format(tmp_path)


def test_non_utf8_file_name(tmp_path, capsys):
    """An image named with bytes that are not UTF-8 (old shares) is read like any other, and
    data.py prints its name escaped instead of ending in a traceback."""
    make_folder(tmp_path, 3)
    bad = os.fsdecode(b"bad\xff")
    write(tmp_path / "images" / f"{bad}.png", noise_image(20, 30))
    write(tmp_path / "masks" / f"{bad}.png", np.zeros((20, 30), np.uint8))
    recs = data.find_records(tmp_path, "all")
    assert len(recs) == 4 and len(data.load_split(tmp_path, "all")) == 4
    assert {len(data.read_sample(r, max_side=30).masks) for r in recs} == {0, 2}
    train, test = data.find_records(tmp_path, "train"), data.find_records(tmp_path, "test")
    assert len(train) + len(test) == 4
    assert data.main([str(tmp_path)]) == 0  # stdout is strict UTF-8, as a terminal's is
    out = capsys.readouterr().out
    assert "images without instances (not trained on): bad\\xff.png" in out


def test_coco_memory_follows_output(tmp_path):
    """Masks are decoded one at a time and resized at once: 400 annotations on a 640x480
    image never hold 400 full-size masks (that alone would be 123 MB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 440, (400, 2))
    anns = [
        {"id": i, "image_id": 0, "segmentation": [[x, y, x + 30, y, x + 30, y + 30, x, y + 30]]}
        for i, (x, y) in enumerate(xy)
    ]
    ims = [{"id": 0, "file_name": "a.png", "width": 640, "height": 480}]
    (tmp_path / "instances.json").write_text(json.dumps({"images": ims, "annotations": anns}))
    write(tmp_path / "images" / "a.png", np.zeros((480, 640, 3), np.uint8))
    rec = data.find_records(tmp_path / "instances.json", "all")[0]
    tracemalloc.start()
    try:
        s = data.read_sample(rec, max_side=64, min_area=1)
        n = data._count_instances(rec)[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(s.masks) == 400 and n == 400
    assert peak < 30e6, peak


def test_train_passes_data_options(tmp_path):
    """train.py's --crowd-instances / --ignore-index reach the readers, and the crowd count
    is among the lines it prints at start-up (the datasets' notes)."""
    import train

    cvat_coco(tmp_path)
    cfg = train.parse_args(["--data", str(tmp_path)])
    assert (cfg.crowd_instances, cfg.ignore_index) == (False, 255)
    train_set, val_set = train.open_data(cfg)
    notes = " ".join(train_set.notes + val_set.notes)
    assert "crowd (iscrowd=1) annotations skipped" in notes and "CVAT" in notes
    cfg = train.parse_args(["--data", str(tmp_path), "--crowd-instances", "--ignore-index", "-1"])
    train_set, val_set = train.open_data(cfg)
    assert sum(len(r.coco) for r in train_set.records + val_set.records) == 4
