"""formats.py: detector files as their writers write them (Ultralytics' predictions.json and
--save-txt labels, detectron2's coco_instances_results.json with its dataset's JSON), matched to
image files, filtered by score and class; boxes clipped with reasons; COCO results that
pycocotools reads back and scores. No model involved."""

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from data import DataError
from formats import (
    Boxes,
    clip_boxes,
    coco_ap,
    coco_image_id,
    coco_record,
    describe_dropped,
    encode_mask,
    load_coco,
    match_boxes,
    read_boxes,
    select_boxes,
)


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def images(*names):
    return [Path("/data/images") / n for n in names]


def test_read_boxes_json_layouts(tmp_path):
    plain = read_boxes(write_json(tmp_path / "a.json", [[1, 2, 30, 40], [5, 5, 9, 9]]))
    assert list(plain) == [None] and plain[None].xyxy.shape == (2, 4)
    assert np.isnan(plain[None].score).all() and plain[None].index.tolist() == [0, 1]
    assert len(read_boxes(write_json(tmp_path / "e.json", []))[None]) == 0

    by_name = read_boxes(write_json(tmp_path / "b.json", {"x/a.jpg": [[1, 2, 3, 4]], "b": []}))
    assert set(by_name) == {"a.jpg", "b"} and len(by_name["b"]) == 0

    dets = [
        {"file_name": "a.jpg", "bbox": [10, 20, 30, 40], "score": 0.9},
        {"image_id": "b", "bbox": [0, 0, 5, 5], "category_id": 1},
        {"file_name": "a.jpg", "bbox": [1, 1, 1, 1]},
    ]
    table = read_boxes(write_json(tmp_path / "c.json", dets))
    assert table["a.jpg"].xyxy.tolist() == [[10, 20, 40, 60], [1, 1, 2, 2]]  # xywh -> xyxy
    assert table["a.jpg"].index.tolist() == [0, 2]  # each box's place in the file
    assert table["a.jpg"].score[0] == 0.9 and np.isnan(table["a.jpg"].score[1])
    assert table["b"].category.tolist() == [1.0]

    coco = {
        "images": [{"id": 7, "file_name": "imgs/c.png"}],
        "annotations": [
            {"image_id": 7, "bbox": [2, 3, 4, 5]},
            {"image_id": 9, "bbox": [0, 0, 1, 1]},
        ],
    }
    table = read_boxes(write_json(tmp_path / "d.json", coco))
    assert table["c.png"].xyxy.tolist() == [[2, 3, 6, 8]] and table[9].xyxy.tolist() == [
        [0, 0, 1, 1]
    ]


@pytest.mark.parametrize(
    "content, expect",
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        ("[[1, 2, 3]]", "x0, y0, x1, y1"),
        ('[[1, 2, "a", 4]]', "x0, y0, x1, y1"),
        ('{"a.jpg": [1, 2, 3, 4]}', "image 'a.jpg'"),
        ('[{"file_name": "a.jpg"}]', "detection 0 lacks"),
        ('[{"image_id": [1], "bbox": [1, 2, 3, 4]}]', "detection 0 lacks"),
        ('[{"file_name": "a.jpg", "bbox": [1, 2]}]', "detection 0"),
        ('[{"image_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}]', "'score' is 'high'"),
        ("3", "expected a JSON list"),
    ],
)
def test_read_boxes_bad_json(tmp_path, content, expect):
    path = tmp_path / "boxes.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=expect) as e:
        read_boxes(path)
    assert "boxes.json" in str(e.value)


def ultralytics_predictions(detections):
    """predictions.json as Ultralytics' DetectionValidator.pred_to_json writes it: image_id is
    int(stem) for a numeric stem, else the stem; bbox x, y, w, h rounded to 3 decimals; score
    rounded to 5; category_id through class_map (here the identity, as for a custom dataset)."""
    out = []
    for file, (x0, y0, x1, y1), conf, cls in detections:
        stem = Path(file).stem
        out.append(
            {
                "image_id": int(stem) if stem.isnumeric() else stem,
                "category_id": cls,
                "bbox": [round(v, 3) for v in (x0, y0, x1 - x0, y1 - y0)],
                "score": round(conf, 5),
            }
        )
    return out


def test_ultralytics_predictions_numeric_stems_score_and_class(tmp_path):
    dets = ultralytics_predictions(
        [
            ("000000000139.jpg", (10.5, 20, 50, 60), 0.91, 0),
            ("000000000139.jpg", (1, 1, 5, 5), 0.004, 0),  # val writes everything >= 0.001
            ("000000000139.jpg", (30, 30, 40, 40), 0.6, 2),
            ("bus.jpg", (0, 0, 8, 8), 0.3, 0),
            ("000000000285.jpg", (0, 0, 8, 8), 0.9, 0),  # an image not in the folder
        ]
    )
    table = read_boxes(write_json(tmp_path / "predictions.json", dets))
    assert set(table) == {139, "bus", 285}
    found, notes = match_boxes(table, images("000000000139.jpg", "bus.jpg", "x.jpg"), "p.json")
    assert [len(b) for b in found] == [3, 1, 0]
    assert found[0].xyxy[0].tolist() == [10.5, 20, 50, 60]
    assert notes == ["1 boxes of 1 images not here (285) ignored", "1 images without boxes (x.jpg)"]
    kept, low, other = select_boxes(found[0], 0.25, [0])
    assert (len(kept), low, other) == (1, 1, 1) and kept.index.tolist() == [0]
    kept, low, other = select_boxes(found[0], 0.25)
    assert (len(kept), low, other) == (2, 1, 0) and kept.category.tolist() == [0, 2]
    unscored = Boxes([[0, 0, 1, 1]])  # boxes without a score pass any --conf
    assert (
        len(select_boxes(unscored, 0.99)[0]) == 1 and len(select_boxes(unscored, 0.5, [0])[0]) == 0
    )


def test_detectron2_results_need_the_dataset_json(tmp_path):
    """coco_instances_results.json as detectron2's COCOEvaluator writes it: the dataset's own
    integer image ids and category ids, bbox XYWH_ABS, score, and an RLE per instance."""
    gt = {
        "images": [
            {"id": 17, "file_name": "lab/beaker_03.jpg", "height": 40, "width": 60},
            {"id": 18, "file_name": "lab/flask_01.jpg", "height": 40, "width": 60},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "vessel"}, {"id": 2, "name": "liquid"}],
    }
    rle = encode_mask(np.ones((40, 60), bool))
    results = [
        {"image_id": 17, "category_id": 2, "bbox": [1.5, 2.0, 10.0, 12.0], "score": 0.97},
        {"image_id": 18, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.4, "segmentation": rle},
        {"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.8},
    ]
    table = read_boxes(write_json(tmp_path / "coco_instances_results.json", results))
    folder = images("beaker_03.jpg", "flask_01.jpg", "17.jpg")
    with pytest.raises(DataError, match="give the dataset's COCO JSON as --gt"):
        match_boxes(table, folder[:2], "r.json")
    _, gt_ids = load_coco(write_json(tmp_path / "instances_val.json", gt))
    assert gt_ids == {"beaker_03.jpg": 17, "beaker_03": 17, "flask_01.jpg": 18, "flask_01": 18}
    found, notes = match_boxes(table, folder, "r.json", gt_ids)
    assert found[0].xyxy.tolist() == [[1.5, 2.0, 11.5, 14.0]] and found[0].category[0] == 2
    assert len(found[1]) == 1 and len(found[2]) == 0  # 17.jpg is not image 17: the JSON says so
    assert notes[0].startswith("1 boxes of 1 images not here (99)")
    with pytest.raises(DataError, match="not a readable COCO"):
        load_coco(write_json(tmp_path / "bad.json", {"images": [{"file_name": "a.jpg"}]}))


def save_txt(path, rows, save_conf=False, track=False):
    """A label file as Ultralytics' Results.save_txt writes it: one line per box, the class,
    then x-centre, y-centre, width, height as fractions of the image, then the confidence
    (save_conf) and the track id (when tracking), each formatted with %g."""
    lines = []
    for i, (cls, cx, cy, w, h, conf) in enumerate(rows):
        line = (cls, cx, cy, w, h) + (conf,) * save_conf + (i + 1,) * track
        lines.append(("%g " * len(line)).rstrip() % line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


def test_yolo_txt_labels(tmp_path):
    labels = tmp_path / "predict" / "labels"
    save_txt(labels / "a.txt", [(0, 0.5, 0.5, 0.5, 0.25, 0.91), (3, 0.1, 0.2, 0.2, 0.1, 0.1)], True)
    save_txt(labels / "b.txt", [(1, 0.25, 0.75, 0.5, 0.5, 0.5)], save_conf=True, track=True)
    save_txt(labels / "c.txt", [(2, 0.5, 0.5, 1.0, 1.0, 0.0)])  # no --save-conf: no score
    table = read_boxes(labels)
    assert set(table) == {"a", "b", "c"} and all(b.normalized for b in table.values())
    found, notes = match_boxes(table, images("a.jpg", "b.png", "c.jpg", "d.jpg"), str(labels))
    a = found[0].in_pixels((200, 400))  # H, W
    np.testing.assert_allclose(a.xyxy, [[100, 75, 300, 125], [0, 30, 80, 50]])
    assert a.score.tolist() == [0.91, 0.1] and a.category.tolist() == [0, 3]
    assert found[1].score.tolist() == [0.5] and np.isnan(found[2].score).all()
    assert notes == ["1 images without boxes (d.jpg)"]  # YOLO writes no file for no detection
    assert set(read_boxes(labels.parent)) == {"a", "b", "c"}  # yolo's run folder: its labels/
    one = read_boxes(labels / "a.txt")  # one file: one image's boxes
    assert list(one) == [None] and len(one[None]) == 2

    (labels / "bad.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(DataError, match=r"bad.txt, line 1: expected 'cls cx cy w h"):
        read_boxes(labels)
    with pytest.raises(DataError, match="no YOLO .txt labels"):
        read_boxes(tmp_path)


def test_match_boxes_one_list_and_nothing_matching():
    one = {None: Boxes([[0, 0, 1, 1]])}
    assert len(match_boxes(one, images("a.jpg"), "b.json")[0][0]) == 1
    with pytest.raises(DataError, match="one list of boxes, for one image"):
        match_boxes(one, images("a.jpg", "b.jpg"), "b.json")
    with pytest.raises(DataError, match=r"none of the images \(a.jpg\); it names photo.jpg"):
        match_boxes({"photo.jpg": Boxes([[0, 0, 1, 1]])}, images("a.jpg"), "b.json")


def test_clip_boxes_says_why():
    boxes = np.array(
        [[-5, -5, 20, 20], [50, 10, 40, 30], [200, 0, 300, 10], [5, 5, 5, 9], [np.nan, 0, 1, 1]]
    )
    kept, ok, dropped = clip_boxes(boxes, (40, 100))
    assert kept.tolist() == [[0, 0, 20, 20]] and ok.tolist() == [True] + [False] * 4
    assert dropped == [(1, "inverted"), (2, "outside"), (3, "outside"), (4, "not finite")]
    line = describe_dropped([("p.jpg", i, boxes[i].tolist(), why) for i, why in dropped])
    assert line.startswith("skipped 4 boxes: 1 inverted (x1 < x0 or y1 < y0): p.jpg box 1")
    assert "2 with no area inside their image" in line and "1 with a coordinate" in line


def test_coco_results_round_trip_and_ap(tmp_path):
    """Results written for masks equal to the ground truth load through COCO.loadRes and
    score AP 1.0; a wrong mask lowers it."""
    h, w = 48, 64
    gt_masks = [np.zeros((h, w), bool) for _ in range(3)]
    gt_masks[0][5:20, 5:30] = True
    gt_masks[1][25:45, 10:60] = True
    gt_masks[2][2:12, 40:62] = True
    anns = [
        {
            "id": i + 1,
            "image_id": 5,
            "category_id": 1 + i % 2,
            "segmentation": encode_mask(m),
            "area": int(m.sum()),
            "bbox": mask_utils.toBbox(encode_mask(m)).tolist(),
            "iscrowd": 0,
        }
        for i, m in enumerate(gt_masks)
    ]
    gt_json = {
        "images": [{"id": 5, "file_name": "000005.jpg", "height": h, "width": w}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    coco, gt_ids = load_coco(write_json(tmp_path / "gt.json", gt_json))
    image_id = coco_image_id("000005.jpg", gt_ids)
    assert image_id == 5 and coco_image_id("000005.jpg") == 5 and coco_image_id("a.jpg") == "a"
    results = [
        coco_record(image_id, "000005.jpg", encode_mask(m), 0.9 - i / 10, 1 + i % 2, label=i + 1)
        for i, m in enumerate(gt_masks)
    ]
    path = write_json(tmp_path / "coco_results.json", results)
    dt = coco.loadRes(str(path))  # the file as written, read back by pycocotools
    assert len(dt.getAnnIds()) == 3 and dt.loadAnns(1)[0]["label"] == 1
    assert results[0]["bbox"] == [5.0, 5.0, 25.0, 15.0]
    for by_class in (True, False):
        stats = coco_ap(coco, json.loads(path.read_text()), [5], by_class)
        assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == stats["AP75"] == 1.0
    wrong = np.zeros((h, w), bool)
    wrong[30:40, 0:5] = True
    results[1] = coco_record(5, "000005.jpg", encode_mask(wrong), 0.8, 2)
    assert coco_ap(coco, results, [5], True)["AP"] < 0.7
    assert coco_ap(coco, [], [5], True)["AP"] == 0.0
