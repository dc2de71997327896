"""Segmentation through the training loop, the CLI and the Segmenter (small U-Nets, a few dozen steps)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile

from napari_aprnet import Segmenter
from napari_aprnet._native import CancelledError
from napari_aprnet.cli import main
from napari_aprnet.data import NucleiDataset
from napari_aprnet.io.images import write_image
from napari_aprnet.training import TrainConfig, run_training
from napari_aprnet.training.predict import Classifier
from napari_aprnet.training.seg_metrics import SegmentationCounts


def _config(**kw) -> TrainConfig:
    base = dict(model="APR_UNet", task="segment", data="nuclei2d", image_shape=[64, 64], steps=30, batch_size=4,
                lr=3e-3, width=8, depth=2, n_test=8, seed=0, bn_batches=4)
    return TrainConfig(**{**base, **kw})


def test_short_training_beats_the_trivial_baselines():
    last = run_training(_config())
    test = last.metrics["test"]
    # the same 8 test images (split 2 of the seed): predicting all foreground / all background
    truth = [NucleiDataset(8, 0, (64, 64), split=2)[i][1] for i in range(8)]
    everything, nothing = SegmentationCounts(), SegmentationCounts()
    for mask in truth:
        everything.add(np.ones_like(mask), mask)
        nothing.add(np.zeros_like(mask), mask)
    baseline = max(everything.iou, nothing.iou)
    assert 0.1 < baseline < 0.4 and nothing.iou == 0.0
    assert test["iou"] > baseline + 0.4, (test, baseline)
    assert test["dice"] > test["iou"] and test["f1"] > 0.5 and test["n"] == 8
    assert last.metrics["error_mean"] < 0.5  # 1 - training IoU over the last steps


@pytest.mark.parametrize("bad, match", [
    (dict(model="APR_B"), "cannot be trained to segment"),
    (dict(data="shapes"), "for the 'classify' task"),
    (dict(task="classify"), "cannot be trained to classify"),
    (dict(augment=True), "augmentation"),
    (dict(image_shape=[8, 64]), "image_shape"),
    (dict(image_shape=[16, 32, 32]), "2 dimensions"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        run_training(_config(**bad))


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    rc = main(["train", "--task", "segment", "--data", "nuclei2d", "--shape", "32x32", "--model", "Pix_UNet",
               "--width", "4", "--depth", "2", "--steps", "4", "--batch-size", "2", "--boundary", "--n-test", "2",
               "--out", str(out)])
    assert rc == 0
    return out


def test_cli_train_and_eval_round_trip(seg_run, capsys):
    assert (seg_run / "checkpoint.pt").is_file()
    assert main(["eval", str(seg_run / "checkpoint.pt"), "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "IoU" in out and "Dice" in out and "F1" in out
    assert "interior" in out and "boundary" in out  # the pixel confusion matrix of the three classes
    with pytest.raises(ValueError, match="trained to segment"):
        Classifier.load(seg_run / "checkpoint.pt")


def test_cli_eval_and_predict_on_a_folder(seg_run, tmp_path, capsys):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    ds = NucleiDataset(2, seed=9, shape=(40, 36))
    for i in range(2):
        image, mask = ds[i]
        tifffile.imwrite(tmp_path / "data" / "images" / f"n{i}.tif", image)
        write_image(tmp_path / "data" / "masks" / f"n{i}.png", mask.astype(np.uint8))
    assert main(["eval", str(seg_run / "checkpoint.pt"), "--data", str(tmp_path / "data")]) == 0
    assert "2 images  IoU" in capsys.readouterr().out
    images = [str(tmp_path / "data" / "images" / f"n{i}.tif") for i in range(2)]
    assert main(["predict", str(seg_run / "checkpoint.pt"), *images, "--out", str(tmp_path / "pred")]) == 0
    labels = tifffile.imread(tmp_path / "pred" / "n1_labels.tif")
    assert labels.shape == (40, 36) and labels.dtype == np.int32
    assert "objects" in capsys.readouterr().out


def test_segmenter_whole_tiled_cancelled(seg_run):
    seg = Segmenter.load(seg_run / "checkpoint.pt")
    assert seg.class_names == ("background", "interior", "boundary") and seg.ndim == 2 and seg.mode == "pixels"
    image = NucleiDataset(1, seed=3, shape=(70, 90))[0][0]
    whole = seg.segment(image)
    assert whole.classes.shape == whole.labels.shape == (70, 90) and whole.probabilities.shape == (3, 70, 90)
    np.testing.assert_allclose(whole.probabilities.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(whole.classes, whole.probabilities.argmax(0))
    assert (whole.labels[whole.classes == 0] == 0).all()
    # tiles with a halo beyond the receptive field of the small net give the whole-image result
    calls = []
    tiled = seg.segment(image, tile=32, halo=24, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 9) for k in range(1, 10)]
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-4)
    region = seg.segment(image, region=(slice(10, 50), slice(20, 80)), halo=24)
    np.testing.assert_allclose(region.probabilities, whole.probabilities[:, 10:50, 20:80], atol=1e-4)
    stop = threading.Event()
    stop.set()
    with pytest.raises(CancelledError):
        seg.segment(image, tile=32, stop=stop)
    with pytest.raises(ValueError, match="3D grey stacks|2D grey"):
        seg.segment(np.zeros((4, 32, 32), np.float32))


def test_apr_segmenter_on_images_and_aprs(tmp_path):
    last = run_training(_config(steps=2, n_test=1), tmp_path / "apr")
    seg = Segmenter.load(last.checkpoint)
    image, mask = NucleiDataset(1, seed=5, shape=(48, 64))[0]
    from napari_aprnet import APR
    apr = APR.from_image(image, rel_error=seg.spec.rel_error)
    direct = seg.segment(apr)
    via_image = seg.segment(image)  # converted with the same parameters: the same APR
    np.testing.assert_allclose(direct.probabilities, via_image.probabilities, atol=1e-5)
    probs = seg.particle_probabilities(apr)
    assert probs.shape == (apr.n_particles, 2)
    np.testing.assert_allclose(seg.segment(apr, region=(slice(8, 40), slice(0, 30))).probabilities,
                               direct.probabilities[:, 8:40, 0:30], atol=1e-6)
    calls = []
    seg.segment(image, tile=32, halo=8, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (4, 4)
    with pytest.raises(ValueError, match="tile applies to images"):
        seg.segment(apr, tile=32)


def test_folder_training_with_epochs(tmp_path):
    ds = NucleiDataset(6, seed=2, shape=(32, 40))
    for split, indices in (("train", range(4)), ("test", range(4, 6))):
        (tmp_path / "data" / split / "images").mkdir(parents=True)
        (tmp_path / "data" / split / "masks").mkdir()
        for i in indices:
            image, mask = ds[i]
            folder = tmp_path / "data" / split
            write_image(folder / "images" / f"n{i}.png", (np.clip(image, 0, 1) * 255).astype(np.uint8))
            write_image(folder / "masks" / f"n{i}.png", mask.astype(np.uint8))
    cfg = TrainConfig(model="Pix_UNet", task="segment", data=str(tmp_path / "data"), epochs=2, batch_size=2,
                      width=4, depth=2, val_fraction=0.25, bn_batches=1)
    last = run_training(cfg, tmp_path / "run")
    assert last.phase == "done" and (tmp_path / "run" / "best.pt").is_file()
    assert set(last.metrics["test"]) >= {"iou", "dice", "f1"} and last.metrics["test"]["n"] == 2
    seg = Segmenter.load(tmp_path / "run" / "best.pt")
    assert seg.class_names == ("background", "foreground")
    with pytest.raises(FileNotFoundError, match="images/ and masks/"):
        run_training(TrainConfig(model="Pix_UNet", task="segment", data=str(tmp_path / "nothing"), epochs=1))
