"""Training crops of in-memory annotations (data/annotated.py) and segmentation training from them."""
from __future__ import annotations

import numpy as np
import pytest

from napari_aprnet.cli import main
from napari_aprnet.data import AnnotatedImages, CropDataset
from napari_aprnet.data.annotated import MAX_VAL_CROPS
from napari_aprnet.data.nuclei import make_nuclei
from napari_aprnet.training import TrainConfig, run_training
from napari_aprnet.training.checkpoint import load_checkpoint
from napari_aprnet.training.seg_metrics import SegmentationCounts
from napari_aprnet.training.segment import Segmenter


def _inverses():
    """The inverses of the 8 flips/rotations of the last two axes."""
    return [lambda x, f=flip, k=k: np.flip(np.rot90(x, -k, axes=(-2, -1)), -1) if f else np.rot90(x, -k, axes=(-2, -1))
            for flip in (False, True) for k in range(4)]


def _coded(shape, seed=0):
    """An image whose every pixel value is unique (its flat index), and random labels drawn in a box."""
    image = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    labels = np.zeros(shape, np.int32)
    rng = np.random.default_rng(seed)
    box = tuple(slice(s // 4, s // 4 + s // 3) for s in shape)
    labels[box] = rng.integers(0, 4, labels[box].shape)
    return image, labels


def _where(crop_image: np.ndarray, image: np.ndarray):
    """The box of ``image`` a crop was cut from (undoing its flip/rotation), as (corner, which transform)."""
    for which, inverse in enumerate(_inverses()):
        back = inverse(crop_image)
        corner = np.unravel_index(int(back.flat[0]), image.shape)
        box = tuple(slice(c, c + s) for c, s in zip(corner, back.shape))
        if back.shape == image[box].shape and np.array_equal(back, image[box]):
            return corner, which
    raise AssertionError("the crop is no flip/rotation of a box of the image")


def test_crops_are_aligned_flipped_rotated_boxes_inside_the_annotated_area():
    image, labels = _coded((96, 80))
    splits = AnnotatedImages(image, labels).splits(24, 60, seed=3, val_fraction=0.2)
    ys, xs = np.nonzero(labels)
    seen = set()
    for i in range(len(splits.train)):
        crop, lab = splits.train[i]
        assert crop.shape == (24, 24) and lab.shape == (24, 24) and lab.dtype == np.int32
        corner, which = _where(crop, image)
        box = tuple(slice(c, c + 24) for c in corner)
        np.testing.assert_array_equal(_inverses()[which](lab), labels[box])  # the same transform as the image
        seen.add(which)
        # inside the box around the labels (32 x 26 here, grown to the crop where smaller)
        assert ys.min() <= corner[0] and corner[0] + 24 <= ys.max() + 1
        assert xs.min() <= corner[1] and corner[1] + 24 <= xs.max() + 1
    assert len(seen) >= 6  # the augmentation uses (nearly) all 8 flips/rotations
    again = AnnotatedImages(image, labels).splits(24, 60, seed=3, val_fraction=0.2).train
    assert all(np.array_equal(again[i][0], splits.train[i][0]) for i in range(10))  # a pure function of the seed


def test_single_image_validation_is_a_held_out_slab():
    image, labels = _coded((40, 200))  # labels in rows 10..22, columns 50..115: the longest side is x
    splits = AnnotatedImages(image, labels).splits(16, 40, seed=0, val_fraction=0.25)
    assert splits.held_out
    val_cols = set()
    for i in range(len(splits.val)):
        crop, lab = splits.val[i]
        corner, which = _where(crop, image)
        assert which == 0  # validation crops are not augmented
        val_cols |= set(range(corner[1], corner[1] + 16))
    train_cols = set()
    for i in range(len(splits.train)):
        corner, _ = _where(splits.train[i][0], image)
        train_cols |= set(range(corner[1], corner[1] + 16))
    assert not val_cols & train_cols and len(val_cols) >= 16


def test_small_area_validates_on_the_training_area_and_says_so():
    image, labels = _coded((64, 64))  # labels box 21 x 21: grown to the 32 crop, no room for a slab
    splits = AnnotatedImages(image, labels).splits(32, 8)
    assert not splits.held_out and len(splits.val) == 1


def test_a_stack_keeps_the_labelled_planes_and_holds_out_whole_planes():
    rng = np.random.default_rng(1)
    image = rng.random((6, 32, 32)).astype(np.float32)
    labels = np.zeros((6, 32, 32), np.uint16)
    for plane in (0, 2, 3, 5):
        labels[plane, 5:20, 8:25] = plane + 1
    data = AnnotatedImages(image, labels, ndim=2)
    assert data.indices == [(0,), (2,), (3,), (5,)] and data.n_objects == 4
    splits = data.splits(16, 20, seed=2, val_fraction=0.25)
    val_pairs = {p for p, _ in splits.val.tiles}
    train_pairs = {a.pair for a in splits.train.areas}
    assert splits.held_out and len(val_pairs) == 1 and not val_pairs & train_pairs and len(train_pairs) == 3
    for i in range(len(splits.val)):
        pair, (y, x) = splits.val.tiles[i]
        np.testing.assert_array_equal(splits.val[i][0], data.images[pair][y:y + 16, x:x + 16])


def test_volume_and_colour_crops():
    rng = np.random.default_rng(2)
    vol = rng.random((20, 40, 40)).astype(np.float32)
    lab = np.zeros(vol.shape, np.int32)
    lab[4:12, 10:30, 10:30] = 1
    crop, labels = AnnotatedImages(vol, lab, ndim=3).splits((16, 24, 24), 4).train[0]
    assert crop.shape == labels.shape == (16, 24, 24)
    rgb = rng.random((40, 40, 3)).astype(np.float32)
    crop, labels = AnnotatedImages(rgb, lab[0] + 1, rgb=True).splits(16, 4).train[0]
    assert crop.shape == (16, 16, 3) and labels.shape == (16, 16)


def test_many_validation_tiles_are_capped():
    image = np.zeros((512, 512), np.float32)
    labels = np.ones((512, 512), np.int32)
    splits = AnnotatedImages(image, labels).splits(16, 4)
    assert len(splits.val) == MAX_VAL_CROPS and isinstance(splits.val, CropDataset)


@pytest.mark.parametrize("image, labels, kw, match", [
    (np.zeros((32, 32)), np.zeros((32, 32), np.int32), {}, "no labels are drawn"),
    (np.zeros((32, 32)), np.ones((32, 31), np.int32), {}, "labels have shape"),
    (np.zeros((32, 32)), np.ones((32, 32), np.float32), {}, "integers"),
    (np.zeros((32, 32)), -np.ones((32, 32), np.int32), {}, "integers"),
    (np.zeros((32, 32), bool), np.ones((32, 32), np.int32), {}, "intensities"),
    (np.zeros((8, 32, 32)), np.pad(np.ones((1, 10, 10), np.int32), ((3, 4), (5, 17), (5, 17))), {"ndim": 3},
     "single plane"),
    (np.zeros((32, 32)), np.ones((32, 32), np.int32), {"ndim": 3}, "cannot hold 3D"),
])
def test_errors_say_what_is_wrong(image, labels, kw, match):
    with pytest.raises(ValueError, match=match):
        AnnotatedImages(image, labels, **kw)


def test_crop_errors():
    data = AnnotatedImages(np.zeros((32, 48)), np.ones((32, 48), np.int32))
    with pytest.raises(ValueError, match="larger than the image"):
        data.splits(40, 4)
    with pytest.raises(ValueError, match="at least 16"):
        data.splits(8, 4)


def _nuclei(seed, shape):
    return make_nuclei(np.random.default_rng(seed), shape)


def test_training_from_annotations_segments_fresh_images(tmp_path):
    image, labels = _nuclei(0, (128, 128))
    config = TrainConfig(model="APR_UNet", task="segment", data="annotations", image_shape=[48, 48], steps=30,
                         batch_size=4, lr=3e-3, width=8, depth=2, seed=0, bn_batches=4, eval_every=15)
    last = run_training(config, tmp_path / "run", annotations=AnnotatedImages(image, labels))
    assert last.phase == "done" and last.checkpoint.endswith("best.pt")
    seg = Segmenter.load(last.checkpoint)
    counts, nothing = SegmentationCounts(), SegmentationCounts()
    for seed in (11, 12):  # fresh images, never seen
        fresh, truth = _nuclei(seed, (64, 64))
        counts.add(seg.segment(fresh).classes, truth)
        nothing.add(np.ones_like(truth), truth)  # everything foreground: the trivial baseline
    assert counts.iou > nothing.iou + 0.4, (counts.iou, nothing.iou)

    # fine-tuning: a new run starts from those weights (a tiny learning rate barely moves them)
    tuned = TrainConfig(**{**config.to_dict(), "steps": 1, "lr": 1e-9, "init_from": last.checkpoint, "bn_batches": 0})
    ev = run_training(tuned, tmp_path / "tuned", annotations=AnnotatedImages(image, labels))
    before, after = load_checkpoint(last.checkpoint)["state_dict"], load_checkpoint(ev.checkpoint)["state_dict"]
    convs = [k for k, v in before.items() if v.ndim > 1]
    assert convs and all(float((after[k] - before[k]).abs().max()) < 1e-6 for k in convs)


def test_annotation_run_errors(tmp_path):
    image, labels = _nuclei(0, (64, 64))
    base = dict(model="APR_UNet", task="segment", data="annotations", image_shape=[32, 32], steps=1, batch_size=2,
                width=4, depth=2, bn_batches=0)
    with pytest.raises(ValueError, match="pass them to train"):
        run_training(TrainConfig(**base))
    with pytest.raises(ValueError, match="give steps, not epochs"):
        run_training(TrainConfig(**{**base, "epochs": 3}), annotations=AnnotatedImages(image, labels))
    with pytest.raises(ValueError, match="3 sides"):
        run_training(TrainConfig(**{**base, "image_shape": [16, 16, 16]}), annotations=AnnotatedImages(image, labels))
    first = run_training(TrainConfig(**base), tmp_path / "a", annotations=AnnotatedImages(image, labels))
    with pytest.raises(ValueError, match="another network"):
        run_training(TrainConfig(**{**base, "width": 8, "init_from": first.checkpoint}),
                     annotations=AnnotatedImages(image, labels))
    # the command line fine-tunes too (here on synthetic nuclei, from the annotations' network)
    assert main(["train", "--task", "segment", "--data", "nuclei2d", "--shape", "32x32", "--width", "4", "--depth",
                 "2", "--steps", "1", "--batch-size", "2", "--n-test", "1", "--init-from", first.checkpoint,
                 "--out", str(tmp_path / "cli")]) == 0
    assert load_checkpoint(tmp_path / "cli" / "checkpoint.pt")["train"]["config"]["init_from"] == first.checkpoint
