"""SegmentationTask: targets per particle and per pixel, the cell-size-weighted loss, score and tally, against
dense per-pixel references built from ``particle_id_image``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_aprnet import APR
from napari_aprnet.data import NucleiDataset
from napari_aprnet.training import TrainConfig
from napari_aprnet.training.seg_metrics import SegmentationCounts, label_instances
from napari_aprnet.training.tasks import SegmentationTask, mask_classes


@pytest.fixture(scope="module")
def items():
    ds = NucleiDataset(2, seed=4, shape=(48, 56))
    return [(APR.from_image(image, rel_error=0.2), mask) for image, mask in (ds[0], ds[1])]


def _dense_majority(structure, classes: np.ndarray) -> np.ndarray:
    """Majority class of each particle's pixels, ties to the larger class (numpy reference)."""
    ids = structure.particle_id_image().ravel()
    counts = np.zeros((structure.n_particles, int(classes.max()) + 1), np.int64)
    np.add.at(counts, (ids, classes.ravel()), 1)
    return counts.shape[1] - 1 - np.argmax(counts[:, ::-1], axis=1)


def test_mask_classes_by_hand():
    mask = np.zeros((5, 8), np.int32)
    mask[1:4, 1:4] = 1
    mask[1:4, 4:7] = 2  # touches object 1
    np.testing.assert_array_equal(mask_classes(mask, 2), mask > 0)
    three = mask_classes(mask, 3)
    expected = np.zeros((5, 8), int)
    expected[1:4, 1:7] = 2
    expected[2, 2] = expected[2, 5] = 1  # the only pixels with all four neighbours in their own object
    np.testing.assert_array_equal(three, expected)
    with pytest.raises(ValueError, match="2 classes"):
        mask_classes(mask, 4)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_particle_targets_are_cell_majorities(items, n_classes):
    task = SegmentationTask(n_classes)
    targets = task.targets([task.item_target(mask, apr) for apr, mask in items])
    assert len(targets) == 2 and targets.structures == [apr.structure for apr, _ in items]
    expected = np.concatenate([_dense_majority(apr.structure, mask_classes(mask, n_classes)) for apr, mask in items])
    np.testing.assert_array_equal(targets.classes.numpy(), expected)
    np.testing.assert_array_equal(targets.weights.numpy(),
                                  np.concatenate([apr.structure.pixel_counts for apr, _ in items]))
    assert targets.weights.sum() == sum(m.size for _, m in items)


def test_pixel_targets_and_shape_check(items):
    task = SegmentationTask(2)
    masks = [m for _, m in items]
    targets = task.targets([task.item_target(m, np.zeros((1, *m.shape), np.float32)) for m in masks])
    assert targets.weights is None and targets.structures is None
    np.testing.assert_array_equal(targets.classes.numpy(), np.stack(masks) > 0)
    with pytest.raises(ValueError, match="mask has shape"):
        task.item_target(masks[0], np.zeros((1, 48, 55), np.float32))


def _painted(items, targets, logits):
    """Per-pixel logits and classes: every pixel takes its particle's (the dense reference)."""
    offsets = np.cumsum([0] + [apr.n_particles for apr, _ in items])
    px_logits, px_classes = [], []
    for (apr, _), a in zip(items, offsets[:-1]):
        ids = torch.from_numpy(apr.structure.particle_id_image().ravel()) + int(a)
        px_logits.append(logits[ids])
        px_classes.append(targets.classes[ids])
    return torch.cat(px_logits), torch.cat(px_classes)


@pytest.mark.parametrize("dice_weight", [0.0, 0.7])
def test_weighted_loss_equals_the_dense_pixel_loss(items, dice_weight):
    task = SegmentationTask(2, dice_weight=dice_weight, loss_weighting="pixels")
    targets = task.targets([task.item_target(mask, apr) for apr, mask in items])
    logits = torch.randn(len(targets.classes), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                         requires_grad=True)
    px_logits, px_classes = _painted(items, targets, logits)
    expected = F.cross_entropy(px_logits, px_classes)
    if dice_weight:
        fg, truth = torch.softmax(px_logits, 1)[:, 1], (px_classes > 0).double()
        expected = expected + dice_weight * (1 - (2 * (fg * truth).sum() + 1) / (fg.sum() + truth.sum() + 1))
    loss = task.loss(logits, targets)
    torch.testing.assert_close(loss, expected)
    g, = torch.autograd.grad(loss, logits)
    g_ref, = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(g, g_ref)
    if not dice_weight:  # unweighted, each particle would count once: another loss on a real APR
        assert abs(float(F.cross_entropy(logits, targets.classes)) - float(expected)) > 1e-3


@pytest.mark.parametrize("dice_weight", [0.0, 0.7])
def test_particle_weighting_counts_every_particle_once(items, dice_weight):
    task = SegmentationTask(2, dice_weight=dice_weight)  # the default: each particle once
    assert task.loss_weighting == "particles"
    targets = task.targets([task.item_target(mask, apr) for apr, mask in items])
    logits = torch.randn(len(targets.classes), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = F.cross_entropy(logits, targets.classes)
    if dice_weight:
        fg, truth = torch.softmax(logits, 1)[:, 1], (targets.classes > 0).double()
        expected = expected + dice_weight * (1 - (2 * (fg * truth).sum() + 1) / (fg.sum() + truth.sum() + 1))
    torch.testing.assert_close(task.loss(logits, targets), expected)
    pixels = SegmentationTask(2, dice_weight=dice_weight, loss_weighting="pixels")  # differs on a multi-level APR
    assert abs(float(pixels.loss(logits, targets)) - float(expected)) > 1e-3
    with pytest.raises(ValueError, match="loss_weighting"):
        SegmentationTask(2, loss_weighting="cells")
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(task="segment", model="APR_UNet", data="nuclei2d", steps=1, loss_weighting="cells").validate()
    # runs stored before the option existed weighted by pixels, and resume so
    stored = TrainConfig(task="segment", model="APR_UNet", data="nuclei2d", steps=1).to_dict()
    assert TrainConfig.from_dict(stored).loss_weighting == "particles"
    del stored["loss_weighting"]
    assert TrainConfig.from_dict(stored).loss_weighting == "pixels"


def test_pixel_loss_is_plain_cross_entropy(items):
    task = SegmentationTask(3)
    masks = [m for _, m in items]
    targets = task.targets([task.item_target(m, np.zeros((1, *m.shape), np.float32)) for m in masks])
    logits = torch.randn(2, 3, *masks[0].shape, dtype=torch.float64)
    torch.testing.assert_close(task.loss(logits, targets), F.cross_entropy(logits, targets.classes))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_score_and_tally_on_the_pixel_grid(items, n_classes):
    task = SegmentationTask(n_classes)
    targets = task.targets([task.item_target(mask, apr) for apr, mask in items])
    # a prediction that is the target with some particles flipped
    logits = torch.nn.functional.one_hot(targets.classes, n_classes).double() * 4
    flip = torch.rand(len(logits), generator=torch.Generator().manual_seed(1)) < 0.2
    logits[flip] = logits[flip].roll(1, dims=1)
    px_logits, px_classes = _painted(items, targets, logits)
    pred, truth = px_logits.argmax(1) > 0, px_classes > 0
    assert task.score(logits, targets) == pytest.approx(float((pred & truth).sum() / (pred | truth).sum()))
    tally = task.tally()
    tally.add(logits, targets)
    res = tally.result()
    counts, confusion = SegmentationCounts(), np.zeros((n_classes, n_classes), int)
    offsets = np.cumsum([0] + [apr.n_particles for apr, _ in items])
    for (apr, mask), a, b in zip(items, offsets[:-1], offsets[1:]):
        classes = logits[a:b].argmax(1).numpy()[apr.structure.particle_id_image()]
        seeds = classes == 1 if n_classes == 3 else None
        counts.add(classes, mask, instances=label_instances(classes > 0, seeds))
        np.add.at(confusion, (mask_classes(mask, n_classes).ravel(), classes.ravel()), 1)
    assert (res.iou, res.dice, res.f1) == pytest.approx((counts.iou, counts.dice, counts.f1))
    np.testing.assert_array_equal(res.confusion, confusion)
    assert res.accuracy == pytest.approx(np.trace(confusion) / confusion.sum()) and res.n == 2
    assert res.loss == pytest.approx(float(task.loss(logits, targets)))
    assert 0 < res.iou < 1 and res.score == res.iou


def test_targets_move_to_a_device(items):
    task = SegmentationTask(2)
    targets = task.targets([task.item_target(mask, apr) for apr, mask in items])
    moved = targets.to("meta")
    assert moved.classes.device.type == "meta" and moved.weights.device.type == "meta"
    assert moved.masks is targets.masks and moved.structures is targets.structures and len(moved) == 2
