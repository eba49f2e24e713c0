"""formats.py and infer.py's results beside a COCO --gt: label files laid out as Ultralytics'
Results.save_txt writes them (conf with save_conf, track id with yolo track), scores that are
not numbers, results that pycocotools loads against --gt when the folder has other images, and
what --boxes says when --gt does not fit it. No model involved."""

import contextlib
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import infer
from data import DataError
from formats import drop_bad_scores, load_coco, match_boxes, read_boxes, select_boxes


def save_txt(path, boxes, save_conf=False, ids=None):
    """A label file as Ultralytics' Results.save_txt writes it: per box the class, then x-centre,
    y-centre, width, height in fractions of the image, then the conf when save_conf, then the
    track id when tracking; every value through %g, one line each, the file opened to append."""
    with open(path, "a") as f:
        for j, (cls, cx, cy, w, h, conf) in enumerate(boxes):
            line = (cls, cx, cy, w, h) + (conf,) * save_conf + (() if ids is None else (ids[j],))
            f.write(("%g " * len(line)).rstrip() % line + "\n")
    return path


BOXES = [(0, 0.5, 0.5, 0.5, 0.25, 0.91), (3, 0.1, 0.2, 0.2, 0.1, 0.25), (1, 0.7, 0.7, 0.2, 0.2, 1)]


def test_yolo_txt_columns_as_ultralytics_writes_them(tmp_path):
    predict = read_boxes(save_txt(tmp_path / "p.txt", BOXES, save_conf=True))[None]
    assert predict.score.tolist() == [0.91, 0.25, 1.0] and predict.category.tolist() == [0, 3, 1]
    plain = read_boxes(save_txt(tmp_path / "n.txt", BOXES))[None]  # no save_conf: no scores
    assert np.isnan(plain.score).all() and not plain.bad_score.any()

    tracked = save_txt(tmp_path / "t.txt", BOXES, save_conf=True, ids=[7, 12, 3])  # 7 columns
    boxes = read_boxes(tracked)[None]
    assert boxes.score.tolist() == [0.91, 0.25, 1.0]  # the conf, not the id after it
    np.testing.assert_allclose(boxes.in_pixels((100, 200)).xyxy[0], [50, 37.5, 150, 62.5])

    ids_only = save_txt(tmp_path / "track.txt", BOXES, ids=[7, 12, 3])  # yolo track, no conf
    with pytest.raises(DataError, match=r"track.txt: column 6 holds 7 \(line 1\)") as e:
        read_boxes(ids_only)
    assert "cannot say which" in str(e.value) and "save_conf=True" in str(e.value)
    (tmp_path / "folder").mkdir()
    save_txt(tmp_path / "folder" / "a.txt", BOXES, save_conf=True)
    save_txt(tmp_path / "folder" / "b.txt", [(0, 0.5, 0.5, 0.2, 0.2, 42.0)], save_conf=True)
    with pytest.raises(DataError, match=r"b.txt: column 6 holds 42"):  # a score above 1
        read_boxes(tmp_path / "folder")

    save_txt(tracked, BOXES[:1])  # appended without conf and id: two layouts in one file
    with pytest.raises(DataError, match=r"t.txt: lines of 5 and 7 columns in one file"):
        read_boxes(tracked)
    bad = save_txt(tmp_path / "b7.txt", [(0, 0.5, 0.5, 0.2, 0.2, 1.5)], save_conf=True, ids=[4])
    with pytest.raises(DataError, match=r"b7.txt, line 1: conf 1.5 is not in \[0, 1\]"):
        read_boxes(bad)


def test_scores_that_are_not_numbers_are_dropped(tmp_path):
    dets = [
        {"file_name": "a.jpg", "bbox": [0, 0, 5, 5], "score": 0.9},
        {"file_name": "a.jpg", "bbox": [0, 0, 5, 5], "score": math.nan},
        {"file_name": "a.jpg", "bbox": [0, 0, 5, 5]},  # no score: kept at any --conf
        {"file_name": "a.jpg", "bbox": [0, 0, 5, 5], "score": math.inf},
    ]
    (tmp_path / "d.json").write_text(json.dumps(dets))  # Python's json writes NaN, Infinity
    boxes = read_boxes(tmp_path / "d.json")["a.jpg"]
    assert boxes.bad_score.tolist() == [False, True, False, True]
    kept, bad = drop_bad_scores(boxes)
    assert bad == [1, 3] and kept.index.tolist() == [0, 2]
    assert len(select_boxes(kept, 0.0)[0]) == 2
    line = "0 0.5 0.5 0.2 0.2 nan\n0 0.5 0.5 0.2 0.2 0.5\n"  # a NaN conf in a label file
    (tmp_path / "a.txt").write_text(line)
    kept, bad = drop_bad_scores(read_boxes(tmp_path / "a.txt")[None])
    assert bad == [0] and kept.score.tolist() == [0.5]


def test_gt_for_other_images_says_what_is_wrong(tmp_path):
    gt = {"images": [{"id": 17, "file_name": "a.jpg"}, {"id": 18, "file_name": "b.jpg"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt | {"annotations": [], "categories": []}))
    _, gt_ids = load_coco(tmp_path / "gt.json")
    (tmp_path / "r.json").write_text(json.dumps([{"image_id": 3, "bbox": [0, 0, 4, 4]}]))
    table = read_boxes(tmp_path / "r.json")
    folder = [Path("/x/a.jpg"), Path("/x/b.jpg")]
    with pytest.raises(DataError, match=r"--gt gives these images ids 17, 18: its detections") as e:
        match_boxes(table, folder, "r.json", gt_ids)
    assert "give the dataset's COCO JSON as --gt" not in str(e.value)
    with pytest.raises(DataError, match="--gt has none of these images' names"):
        match_boxes(table, [Path("/x/c.jpg")], "r.json", gt_ids)
    with pytest.raises(DataError, match="give the dataset's COCO JSON as --gt"):
        match_boxes(table, folder, "r.json")  # no --gt: that is the advice


def box_masks(sam, image, coords, labels, batch=64, max_side=1024):
    """A stand-in for infer.predict_prompts whose mask is the prompt's box, scored 0.9 down."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:256, :256] + 0.5
    c = coords * [256 / w, 256 / h]
    x0, y0, x1, y1 = (c[:, i // 2, i % 2, None, None] for i in range(4))
    inside = np.minimum.reduce([xx - x0, x1 - xx, yy - y0, y1 - yy])
    return torch.from_numpy(inside.astype(np.float32)), np.linspace(0.9, 0.5, len(coords))


def test_results_beside_gt_load_with_pycocotools(tmp_path, monkeypatch, capsys):
    """A folder with images the --gt JSON lacks (one named like a --gt id): coco_results.json
    holds --gt's images only, so COCO.loadRes takes it and COCOeval runs; the others' masks go
    to their own file, counted in the summary. A NaN detector score is dropped and counted."""
    monkeypatch.setattr(infer, "load_model", lambda *a: None)
    monkeypatch.setattr(infer, "predict_prompts", box_masks)
    h, w = 60, 80
    objects = {"a.jpg": [10, 10, 40, 40], "b.jpg": [20, 5, 70, 50]}
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    for image_id, (name, (x0, y0, x1, y1)) in enumerate(objects.items(), start=17):
        gt["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
        ann = {"id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0}
        ann |= {"bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
        gt["annotations"].append(ann | {"segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    dets = [
        {"file_name": n, "bbox": a["bbox"], "score": 0.8}
        for n, a in zip(objects, gt["annotations"])
    ]
    dets += [
        {"file_name": "extra.jpg", "bbox": [5, 5, 30, 30], "score": 0.7},  # not in --gt
        {"file_name": "17.jpg", "bbox": [5, 5, 30, 30], "score": 0.7},  # not --gt's image 17
        {"file_name": "a.jpg", "bbox": [50, 40, 20, 15], "score": math.nan},
    ]
    (tmp_path / "val").mkdir()
    for name in [*objects, "extra.jpg", "17.jpg"]:
        assert cv2.imwrite(str(tmp_path / "val" / name), np.zeros((h, w, 3), np.uint8))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))

    out = tmp_path / "o"
    args = ["--boxes", tmp_path / "dets.json", "--gt", tmp_path / "gt.json", "--out", out]
    rc = infer.main([str(a) for a in [tmp_path / "val", *args]])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr
    assert (
        "5 boxes for these images, 4 kept; 1 with a score that is not a number (a.jpg box 4)"
        in stderr
    )
    assert "2 masks of 2 image(s) not in --gt in coco_results_not_in_gt.json" in stdout
    assert "AP50 1.000" in stdout

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        dt = coco.loadRes(str(out / "coco_results.json"))  # the file as written
        ev = COCOeval(coco, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP50: each mask is its box
    results = json.loads((out / "coco_results.json").read_text())
    assert sorted(r["image_id"] for r in results) == [17, 18]
    assert all(r["detection"] != 4 for r in results)  # the NaN-scored box made no mask
    others = json.loads((out / "coco_results_not_in_gt.json").read_text())
    assert sorted((r["file_name"], r["image_id"]) for r in others) == [
        ("17.jpg", 17),
        ("extra.jpg", "extra"),
    ]


def test_gt_is_read_by_the_training_coco_reader(tmp_path):
    """--gt goes through layouts.coco.index_coco, the reader train.py uses: its per-entry
    messages, its orphan warning, and pycocotools' index over what it kept; COCOeval's own
    needs (annotation ids, category ids where categories are listed) are named."""
    im = {"id": 1, "file_name": "a.jpg", "width": 8, "height": 6}
    ann = {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 4]]}
    gt = {"images": [im], "annotations": [ann], "categories": [{"id": 1}]}

    def load(d):
        path = tmp_path / "gt.json"
        path.write_text(json.dumps(d))
        return load_coco(path)

    with pytest.raises(DataError, match=r"--gt .*gt\.json: .*images\[0\] needs an 'id'"):
        load(gt | {"images": [{"file_name": "a.jpg"}]})
    with pytest.raises(DataError, match=r"image id 1: 'width' must be a positive integer"):
        load(gt | {"images": [im | {"width": "8"}]})
    with pytest.raises(DataError, match=r"annotations\[0\] has no 'category_id'"):
        load(gt | {"annotations": [{k: v for k, v in ann.items() if k != "category_id"}]})
    with pytest.raises(DataError, match=r"annotations\[0\] has no 'id'"):
        load(gt | {"annotations": [{k: v for k, v in ann.items() if k != "id"}]})
    orphan = ann | {"id": 6, "image_id": 9}
    with pytest.warns(UserWarning, match=r"skipped 1 annotations .*annotation id 6 \(image_id 9\)"):
        coco, ids = load(gt | {"annotations": [ann, orphan]})
    assert ids == {"a": 1, "a.jpg": 1} and [a["id"] for a in coco.imgToAnns[1]] == [5]
    assert coco.getAnnIds(imgIds=[1], catIds=[1]) == [5] and len(coco.dataset["annotations"]) == 2
