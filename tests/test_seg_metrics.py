"""Segmentation measures against hand-built cases and a brute-force object matching."""
from __future__ import annotations

import numpy as np
import pytest

from napari_aprnet.training.seg_metrics import (
    SegmentationCounts,
    dice_score,
    iou_score,
    label_instances,
    match_objects,
    object_f1,
)


def test_iou_and_dice_by_hand():
    truth = np.zeros((6, 6), int)
    truth[0:2, 0:3] = 1  # 6 pixels
    pred = np.zeros((6, 6), int)
    pred[0:2, 0:2] = 1  # 4 pixels, all inside the truth
    assert iou_score(pred, truth) == pytest.approx(4 / 6)
    assert dice_score(pred, truth) == pytest.approx(8 / 10)
    pred[5, 5] = 1  # one false positive pixel
    assert iou_score(pred, truth) == pytest.approx(4 / 7)
    assert dice_score(pred, truth) == pytest.approx(8 / 11)
    empty = np.zeros((3, 3), int)
    assert iou_score(empty, empty) == dice_score(empty, empty) == object_f1(empty, empty) == 1.0
    assert iou_score(empty + 1, empty) == 0.0 and object_f1(empty + 1, empty) == 0.0


def test_counts_add_over_images():
    truth1, pred1 = np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]])  # I 1, P 1, T 2
    truth2, pred2 = np.array([[0, 2, 2, 2]]), np.array([[1, 1, 1, 0]])  # I 2, P 3, T 3
    c = SegmentationCounts().add(pred1, truth1).add(pred2, truth2)
    assert (c.intersection, c.predicted, c.true) == (3, 4, 5)
    assert c.iou == pytest.approx(3 / 6) and c.dice == pytest.approx(6 / 9)
    # objects: image 1 IoU 1/2 (not > 0.5) -> FP 1, FN 1; image 2 IoU 2/4 -> FP 1, FN 1
    assert (c.tp, c.fp, c.fn) == (0, 2, 2) and c.f1 == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        c.add(np.zeros((2, 2)), np.zeros((2, 3)))


def test_object_f1_by_hand():
    truth = np.zeros((10, 20), int)
    truth[1:5, 1:5] = 1  # found well
    truth[1:5, 6:8] = 2  # touches nothing; missed
    truth[6:9, 1:9] = 3  # merged with 4 by the prediction
    truth[6:9, 9:12] = 4
    pred = np.zeros_like(truth)
    pred[1:5, 1:4] = 1  # IoU 12/16 with object 1
    pred[6:9, 1:12] = 1  # one component over 3 and 4: IoU 24/33 with 3 (match), 9/33 with 4
    pred[1:3, 15:18] = 1  # spurious
    # predicted components: {1:5, 1:4}, {6:9, 1:12}, {1:3, 15:18}
    assert match_objects(label_instances(pred > 0), truth) == (2, 1, 2)
    assert object_f1(pred, truth) == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))


def test_match_objects_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = np.zeros((24, 24), int)
        pred = np.zeros((24, 24), int)
        for labels in (truth, pred):
            for k in range(1, int(rng.integers(1, 7))):
                y, x = rng.integers(0, 20, 2)
                h, w = rng.integers(2, 8, 2)
                labels[y:y + h, x:x + w] = k
        tp = 0
        for p in np.unique(pred)[1:]:
            for t in np.unique(truth)[1:]:
                a, b = pred == p, truth == t
                tp += (a & b).sum() / (a | b).sum() > 0.5
        n_pred, n_true = len(np.unique(pred)) - 1, len(np.unique(truth)) - 1
        assert match_objects(pred, truth) == (tp, n_pred - tp, n_true - tp)
    with pytest.raises(ValueError, match=">= 0.5"):
        match_objects(pred, truth, threshold=0.3)


def test_label_instances_connectivity_and_seeds():
    fg = np.zeros((5, 9), bool)
    fg[1:4, 1:4] = fg[1:4, 4:8] = True  # one blob
    fg[4, 8] = True  # diagonal neighbour only: its own object under face connectivity
    assert label_instances(fg).max() == 2
    seeds = np.zeros_like(fg)
    seeds[2, 2] = seeds[2, 6] = True
    split = label_instances(fg, seeds)
    assert split.max() == 2 and (split[fg] > 0).all() and (split[~fg] == 0).all()
    assert (split[1:4, 1:4] == split[2, 2]).all() and (split[1:4, 5:8] == split[2, 6]).all()
    np.testing.assert_array_equal(label_instances(fg, np.zeros_like(fg)), label_instances(fg))
    vol = np.zeros((3, 4, 4), bool)
    vol[0, 0, 0] = vol[2, 3, 3] = vol[1, 1:3, 1:3] = True
    assert label_instances(vol).max() == 3
