"""More dataset layouts, built as their writers write them: SA-1B (datumaro's segment_anything
exporter, Meta's SA1BRawDataset reads it), COCO panoptic (COCO / detectron2, datumaro),
YOLO with empty label files (datumaro's yolo_ultralytics, supervision), layouts that are only
named, and bad values in labelme / YOLO / COCO files.

python -m pytest -q tests/test_layouts_more.py
"""

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_data import (
    counts,
    labelme_shape,
    masks_as_set,
    noise_image,
    rle_compressed,
    square,
    write,
    yolo_line,
)

import data
import layouts.base
from data import DataError

# ----------------------------------------------------------------------------- SA-1B


def sa1b_json(name: str, masks: list[np.ndarray], image_id: int) -> dict:
    """One image's JSON as datumaro's segment_anything exporter writes it (SA-1B's fields)."""
    h, w = masks[0].shape
    anns = []
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        anns.append(
            {
                "id": k + 1,
                "segmentation": {"size": [h, w], "counts": rle_compressed(m)},
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
                "area": int(m.sum()),
                "predicted_iou": 0.9,
                "stability_score": 0.95,
                "crop_box": [0, 0, w, h],
                "point_coords": [[float(xs[0]), float(ys[0])]],
            }
        )
    image = {"image_id": image_id, "file_name": f"{name}.jpg", "height": h, "width": w}
    return {"image": image, "annotations": anns}


def make_sa1b(root: Path, n_masks: dict[str, int], h: int = 24, w: int = 32) -> dict:
    """sa_N.jpg + sa_N.json side by side (an SA-1B tar's folder); returns the masks."""
    out = {}
    for i, (name, n) in enumerate(n_masks.items()):
        masks = [square(h, w, 2 + 3 * k, 4 + 3 * k, 1 + 4 * k, 5 + 4 * k) for k in range(n)]
        write(root / f"{name}.jpg", noise_image(h, w, i))
        (root / f"{name}.json").write_text(json.dumps(sa1b_json(name, masks, i + 1)))
        out[name] = masks
    return out


def test_sa1b_folder_is_read(tmp_path):
    masks = make_sa1b(tmp_path, {"sa_1": 3, "sa_2": 2, "sa_3": 4, "sa_4": 1, "sa_5": 2})
    assert data.detect_format(tmp_path) == "sa1b"
    recs = data.find_records(tmp_path, "all")
    assert counts(recs) == {
        "sa_1.jpg": 3,
        "sa_2.jpg": 2,
        "sa_3.jpg": 4,
        "sa_4.jpg": 1,
        "sa_5.jpg": 2,
    }
    s = data.read_sample(recs[0], max_side=32, min_area=1)
    assert masks_as_set(s.masks) == masks_as_set(np.stack(masks["sa_1"]))
    text = data.summarize(tmp_path)
    assert "(sa1b layout)" in text and "skipped: 0 files, 0 annotations" in text
    assert len(data.load_split(tmp_path, "train")) == 4
    # an image of another size than its JSON says: named, not read
    doc = json.loads((tmp_path / "sa_2.json").read_text())
    doc["image"]["width"] = 31
    (tmp_path / "sa_2.json").write_text(json.dumps(doc))
    assert "sa_2.jpg is 32x24 but" in data.summarize(tmp_path)


# ----------------------------------------------------------------------------- COCO panoptic


def panoptic_png(path: Path, segments: dict[int, np.ndarray], h: int, w: int) -> None:
    """COCO panoptic PNG: segment id = R + 256 G + 256^2 B, 0 = unlabelled."""
    rgb = np.zeros((h, w, 3), np.uint8)
    for sid, m in segments.items():
        rgb[m] = (sid % 256, sid // 256 % 256, sid // 65536)
    write(path, rgb[..., ::-1])  # cv2 writes BGR


def make_panoptic(root: Path, subset: str, image_dir: Path, datumaro: bool = False) -> dict:
    """annotations/panoptic_<subset>.json + annotations/panoptic_<subset>/<x>.png, images in
    image_dir. COCO's: things isthing 1, stuff isthing 0; datumaro's: every category isthing 0
    (it cannot tell), images without masks get no entry."""
    h, w = 20, 24
    cats = [
        {"id": 1, "name": "cell", "supercategory": "", "isthing": 0 if datumaro else 1},
        {"id": 2, "name": "background", "supercategory": "", "isthing": 0},
    ]
    segs = {  # image stem -> [(segment id, category, iscrowd, mask)]
        "a": [
            (300, 1, 0, square(h, w, 1, 5, 1, 5)),  # id > 255: needs the G channel
            (70001, 1, 0, square(h, w, 6, 9, 1, 5)),  # and the B channel
            (5, 2, 0, square(h, w, 12, 20, 0, 24)),  # stuff
            (6, 1, 1, square(h, w, 1, 5, 10, 20)),  # a crowd of cells
        ],
        "b": [(7, 1, 0, square(h, w, 2, 8, 2, 8))],
        "c": [],
    }
    images, anns = [], []
    for i, (stem, ss) in enumerate(segs.items()):
        write(image_dir / f"{stem}.jpg", noise_image(h, w, i))
        images.append({"id": i + 1, "file_name": f"{stem}.jpg", "width": w, "height": h})
        if not ss and datumaro:
            continue
        panoptic_png(
            root / "annotations" / f"panoptic_{subset}" / f"{stem}.png",
            {sid: m for sid, _, _, m in ss},
            h,
            w,
        )
        info = [
            {"id": sid, "category_id": c, "area": int(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": cr}
            for sid, c, cr, m in ss
        ]
        anns.append({"image_id": i + 1, "file_name": f"{stem}.png", "segments_info": info})
    doc = {"licenses": [], "info": {}, "categories": cats, "images": images, "annotations": anns}
    (root / "annotations" / f"panoptic_{subset}.json").write_text(json.dumps(doc))
    return {stem: [m for _, _, _, m in ss] for stem, ss in segs.items()}


def test_coco_panoptic_things_are_instances(tmp_path):
    """COCO's own layout (detectron2 reads the same): annotations/panoptic_train2017.json, its
    PNGs in annotations/panoptic_train2017/, the images in train2017/."""
    masks = make_panoptic(tmp_path, "train2017", tmp_path / "train2017")
    assert data.detect_format(tmp_path) == "panoptic"
    recs = data.find_records(tmp_path, "all")
    assert counts(recs) == {"a.jpg": 2, "b.jpg": 1, "c.jpg": 0}
    s = data.read_sample(recs[0], max_side=24, min_area=1)
    assert masks_as_set(s.masks) == masks_as_set(np.stack(masks["a"][:2]))
    text = data.summarize(tmp_path)
    assert "(panoptic layout)" in text
    assert "stuff:   1 stuff segments (isthing 0) skipped in 1 images" in text
    assert "crowd (iscrowd=1) annotations skipped" in text
    assert "datumaro" not in text  # a thing category exists
    # asked for: stuff and crowd segments are instances too
    both = data.find_records(tmp_path, "all", crowd=True, stuff=True)
    assert counts(both) == {"a.jpg": 4, "b.jpg": 1, "c.jpg": 0}
    # the JSON given as a path
    assert data.detect_format(tmp_path / "annotations" / "panoptic_train2017.json") == "panoptic"
    assert counts(
        data.find_records(tmp_path / "annotations" / "panoptic_train2017.json", "all")
    ) == {
        "a.jpg": 2,
        "b.jpg": 1,
        "c.jpg": 0,
    }


def test_datumaro_panoptic_every_category_stuff(tmp_path, capsys):
    """datumaro's coco_panoptic export: images/<subset>/, isthing 0 for every category, no
    entry for an image without masks. The summary says so; --stuff-instances reads them."""
    make_panoptic(tmp_path, "default", tmp_path / "images" / "default", datumaro=True)
    text = data.summarize(tmp_path)
    assert "4 stuff segments (isthing 0) skipped in 2 images (no category is a thing" in text
    assert "--stuff-instances makes them instances" in text
    assert data.main([str(tmp_path)]) == 1  # nothing usable without the flag
    capsys.readouterr()
    assert data.main([str(tmp_path), "--stuff-instances"]) == 0
    assert "stuff:" not in capsys.readouterr().out  # none left out
    found = data.find_records(tmp_path, "all", stuff=True)
    assert counts(found) == {"a.jpg": 3, "b.jpg": 1, "c.jpg": 0}  # a's crowd segment stays out


def test_train_and_evaluate_take_stuff_instances(tmp_path):
    import evaluate
    import train

    make_panoptic(tmp_path, "default", tmp_path / "images" / "default", datumaro=True)
    cfg = train.parse_args(["--data", str(tmp_path), "--stuff-instances"])
    assert cfg.stuff_instances
    train_set, val_set = train.open_data(cfg)
    assert sum(len(r.coco) for r in train_set.records + val_set.records) == 4
    assert not train.parse_args(["--data", str(tmp_path)]).stuff_instances
    assert evaluate.parse_args(["--data", str(tmp_path), "--stuff-instances"]).stuff_instances


# ----------------------------------------------------------------------------- YOLO backgrounds


def test_yolo_empty_label_files_are_background_images(tmp_path):
    """datumaro's yolo_ultralytics export: data.yaml naming train.txt / val.txt (lists of
    ./images/<subset>/x.jpg) and an empty labels/<subset>/x.txt for each image without
    objects, as supervision writes them too. 12 backgrounds + 9 annotated: all 21 usable."""
    (tmp_path / "data.yaml").write_text("train: train.txt\nval: val.txt\nnames:\n  0: cell\n")
    poly = yolo_line([0.1, 0.1, 0.5, 0.1, 0.5, 0.5])
    for subset, n_bg, n_ann in (("train", 12, 9), ("val", 2, 1)):
        names = [f"{subset}_bg{i}" for i in range(n_bg)] + [f"{subset}_{i}" for i in range(n_ann)]
        lines = []
        for name in names:
            write(tmp_path / "images" / subset / f"{name}.jpg", noise_image(12, 16))
            label = tmp_path / "labels" / subset / f"{name}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("" if "_bg" in name else poly + "\n")
            lines.append(f"./images/{subset}/{name}.jpg\n")
        (tmp_path / f"{subset}.txt").write_text("".join(lines))
    ds = data.load_split(tmp_path, "train")  # was: "13 of 21 'train' images are bad"
    assert len(ds) == 21
    found = counts(ds.records)
    assert sum(found.values()) == 9 and sorted(found.values()) == [0] * 12 + [1] * 9
    text = data.summarize(tmp_path)
    assert "skipped: 0 files" in text and "14 images without instances" in text


# ----------------------------------------------------------------------------- named layouts


def _xml(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>x.jpg</filename>{body}</annotation>")


POLYGON = "<object><name>cell</name><polygon><pt><x>1</x><y>1</y></pt></polygon></object>"
BNDBOX = "<object><name>cell</name><bndbox><xmin>1</xmin></bndbox></object>"


def _datumaro(root: Path) -> None:
    doc = {"dm_format_version": "1.0", "media_type": 2, "infos": {}, "categories": {}, "items": []}
    (root / "annotations").mkdir()
    (root / "annotations" / "default.json").write_text(json.dumps(doc))
    write(root / "images" / "default" / "x.jpg", noise_image(8, 8))


def _open_images(root: Path) -> None:
    (root / "annotations").mkdir()
    (root / "annotations" / "bbox_labels_600_hierarchy.json").write_text('{"LabelName": "/m/0"}')
    (root / "annotations" / "train-annotations-object-segmentation.csv").write_text("MaskPath\n")
    write(root / "images" / "train" / "x.jpg", noise_image(8, 8))


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda r: (r / "gtFine" / "train").mkdir(parents=True), "Cityscapes"),
        (lambda r: (r / "training" / "image_2").mkdir(parents=True), "KITTI"),
        (lambda r: (r / "instances_txt").mkdir(), "MOTS"),
        (lambda r: (r / "trainannot").mkdir(), "CamVid"),
        (lambda r: _xml(r / "Annotations" / "folder1" / "x.xml", POLYGON), "LabelMe XML"),
        (lambda r: _xml(r / "default" / "x.xml", POLYGON), "LabelMe XML"),
        (lambda r: _xml(r / "x.xml", BNDBOX), "Pascal VOC box XMLs"),
        (lambda r: _xml(r / "Annotations" / "x.xml", BNDBOX), "Pascal VOC boxes"),
        (_datumaro, "datumaro's own format"),
        (_open_images, "Open Images"),
    ],
)
def test_recognised_layouts_are_named(tmp_path, make, says):
    make(tmp_path)
    with pytest.raises(DataError, match=f"looks like {says}") as e:
        data.detect_format(tmp_path)
    assert "COCO" in str(e.value) or "mask" in str(e.value)  # and what to do


# ----------------------------------------------------------------------------- bad values


def test_labelme_list_group_id_is_named_and_skipped(tmp_path, capsys):
    h, w = 16, 20
    shapes = [
        labelme_shape("cell", [[1, 1], [6, 1], [6, 5]]),
        labelme_shape("cell", [[10, 1], [16, 1], [16, 5]], group_id=[1, 2]),
        labelme_shape("cell", [[1, 8], [6, 8], [6, 12]], group_id=3),
    ]
    for stem in ("a", "b"):
        write(tmp_path / f"{stem}.jpg", noise_image(h, w))
        doc = {"shapes": shapes, "imagePath": f"{stem}.jpg", "imageData": None}
        (tmp_path / f"{stem}.json").write_text(json.dumps(doc))
    recs = data.find_records(tmp_path, "all")
    assert counts(recs) == {"a.jpg": 2, "b.jpg": 2}
    with pytest.warns(UserWarning, match=r"a\.jpg: skipped shape 1 \(polygon 'cell'\): group_id"):
        assert len(data.read_sample(recs[0], max_side=20, min_area=1).masks) == 2
    assert data.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a.jpg: shape 1 (polygon 'cell'): group_id must be an integer or null, got [1, 2]" in out


def test_non_finite_and_absurd_coordinates_are_skipped(tmp_path):
    """A NaN or 1e12 coordinate is named and skipped: pycocotools would allocate per pixel of
    the edge (tens of GB) and the kernel would kill the process."""
    h, w = 12, 16
    (tmp_path / "images").mkdir()
    write(tmp_path / "images" / "a.jpg", noise_image(h, w))
    (tmp_path / "labels").mkdir()
    good = yolo_line([0.1, 0.1, 0.5, 0.1, 0.5, 0.5])
    (tmp_path / "labels" / "a.txt").write_text(f"{good}\n0 0.1 0.1 nan 0.2 0.3 0.3\n")
    rec = data.find_records(tmp_path, "all")[0]
    with pytest.warns(UserWarning, match="line 2: a coordinate is not finite"):
        assert len(data.read_sample(rec, max_side=16, min_area=1).masks) == 1
    anns = [
        {"id": 1, "image_id": 0, "segmentation": [[1, 1, 5, 1, 5, 4]]},
        {"id": 2, "image_id": 0, "segmentation": [[1, 1, 1e12, 1, 5, 4]]},
        {
            "id": 3,
            "image_id": 0,
            "segmentation": [[1, 1, 5, 1, 5, 4], [1, 1, float("nan"), 1, 5, 4]],
        },
    ]
    ims = [{"id": 0, "file_name": "a.jpg", "width": w, "height": h}]
    js = tmp_path / "images" / "instances.json"
    js.write_text(json.dumps({"images": ims, "annotations": anns}))
    text = data.summarize(js)
    assert "annotation id 2: polygon 0: coordinate 1000000000000.0 is not finite or far" in text
    assert "annotation id 3: polygon 1: coordinate nan is not finite" in text
    assert "instances per image min 1 / mean 1.0 / max 1" in text


def test_labelme_image_data_used_when_image_absent(tmp_path):
    """labelme's 'Save image data': the image is base64 in imageData; without an image file the
    JSON's own image is read (sizes checked as for a file)."""
    h, w = 12, 16
    img = noise_image(h, w, 3)
    ok, png = cv2.imencode(".png", img)
    doc = {
        "shapes": [labelme_shape("cell", [[1, 1], [8, 1], [8, 6]])],
        "imagePath": "gone.png",
        "imageData": base64.b64encode(png.tobytes()).decode(),
        "imageHeight": h,
        "imageWidth": w,
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    write(tmp_path / "b.jpg", noise_image(h, w))  # a labelme folder needs one image + json pair
    (tmp_path / "b.json").write_text(json.dumps(doc | {"imagePath": "b.jpg", "imageData": None}))
    recs = data.find_records(tmp_path, "all")
    assert recs[0].embedded and data.check_record(recs[0]) is None
    s = data.read_sample(recs[0], max_side=16, min_area=1)
    assert np.array_equal(s.image, img[..., ::-1]) and len(s.masks) == 1
    text = data.summarize(tmp_path)
    assert "skipped: 0 files" in text and "missing image" not in text


def test_instances_per_image_capped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(layouts.base, "MAX_INSTANCES", 3)
    h, w = 12, 16
    write(tmp_path / "a.jpg", noise_image(h, w))
    anns = [
        {"id": k, "image_id": 0, "segmentation": [[k, 1, k + 2, 1, k + 2, 4]]} for k in range(5)
    ]
    ims = [{"id": 0, "file_name": "a.jpg", "width": w, "height": h}]
    (tmp_path / "instances.json").write_text(json.dumps({"images": ims, "annotations": anns}))
    rec = data.find_records(tmp_path, "all")[0]
    with pytest.warns(UserWarning, match=r"2 annotations after the first 3 left out"):
        assert len(data.read_sample(rec, max_side=16, min_area=1).masks) == 3
    text = data.summarize(tmp_path)
    assert "a.jpg: 2 annotations after the first 3 left out (data.MAX_INSTANCES)" in text
    assert "max 3" in text
