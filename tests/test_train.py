"""Training loop, checkpoints, resume, classifier (thesis 4.1.3)."""
from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
import torch

from napari_aprnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_aprnet.classify import Classifier
from napari_aprnet.data import InputSpec, ShapeParams, ShapesDataset, make_shapes_dataset
from napari_aprnet.train import CSV_FIELDS, TrainConfig, run_training, train

# Big, high-contrast outlines of two classes on 32x32 images: learnable in a few hundred small steps.
EASY = {"radius": [0.2, 0.4], "amplitude": [0.04, 0.06], "frequency": [5, 8], "min_contrast": 0.3}
CLASSES = ["triangle", "circle"]


def _config(**kw):
    base = dict(model="Pix_A", data="shapes", size=32, batch_size=16, lr=2e-3, width=0.5, shape_params=EASY,
                classes=CLASSES, seed=0, last_window=20)
    base.update(kw)
    return TrainConfig(**base)


def _held_out(n=40):
    return ShapesDataset(n, seed=123, size=32, split=2, params=ShapeParams.from_dict(EASY), classes=tuple(CLASSES))


def _accuracy(clf, ds):
    images = [ds[i][0] for i in range(len(ds))]
    pred = clf.predict_proba(images).argmax(1)
    return float((pred == ds.labels).mean())


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0].keys()) == list(CSV_FIELDS)
    return rows


def test_pixel_streaming_run_learns(tmp_path):
    events = list(train(_config(steps=300), tmp_path / "run"))
    train_ev = [e for e in events if e.phase == "train"]
    assert [e.step for e in train_ev] == list(range(1, 301))
    assert events[-1].phase == "done" and events[-1].checkpoint.endswith("checkpoint.pt")
    first = np.mean([e.loss for e in train_ev[:30]])
    last = np.mean([e.loss for e in train_ev[-30:]])
    assert last < 0.6 * first, (first, last)
    assert events[-1].metrics["error_mean"] < 0.3
    # held-out images, through the checkpoint
    clf = Classifier.load(events[-1].checkpoint)
    assert clf.class_names == tuple(CLASSES) and clf.mode == "pixels" and clf.input_size == 32
    assert _accuracy(clf, _held_out()) > 0.75  # chance: 0.5
    rows = _read_csv(tmp_path / "run" / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 301))
    assert all(np.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.slow
def test_apr_fixed_dataset_run_learns(tmp_path):
    """APR_A (half width) on a small fixed set: loss falls, best-validation model beats chance on test sets."""
    cfg = _config(model="APR_A", epochs=20, n_train=64, n_val=16, n_test=40, lr=3e-3, dropout=0.0,
                  spatial_dropout=0.0, weight_decay=0.0)
    events = list(train(cfg, tmp_path / "apr"))
    train_ev = [e for e in events if e.phase == "train"]
    # the APR cache: only the first epoch converts training images
    assert len(train_ev) == 160
    assert sum(e.n_converted for e in train_ev[:8]) == 128
    assert sum(e.n_converted for e in train_ev[8:]) == 0
    val = [e for e in events if e.phase == "val"]
    assert len(val) == 20
    assert np.mean([e.loss for e in train_ev[-16:]]) < 0.7 * np.mean([e.loss for e in train_ev[:16]])
    done = events[-1]
    assert done.phase == "done" and done.checkpoint.endswith("best.pt")
    assert set(done.metrics) >= {"best_val_loss", "test", "test_modified"}
    assert done.metrics["best_val_loss"] == pytest.approx(min(e.loss for e in val))
    assert done.metrics["test"]["accuracy"] > 0.75  # 80 held-out images, chance 0.5
    clf = Classifier.load(done.checkpoint)
    assert clf.mode == "apr"
    acc = _accuracy(clf, make_shapes_dataset(40, seed=0, size=32, split=2, params=ShapeParams.from_dict(EASY),
                                             classes=tuple(CLASSES)))
    assert acc == pytest.approx(done.metrics["test"]["accuracy"])


def test_checkpoint_round_trip_identical_predictions(tmp_path):
    torch.manual_seed(0)
    last = run_training(_config(steps=3), tmp_path / "r")
    clf = Classifier.load(last.checkpoint)
    again = Classifier.load(last.checkpoint)
    ds = _held_out(4)
    images = [ds[i][0] for i in range(len(ds))]
    np.testing.assert_array_equal(clf.predict_proba(images), again.predict_proba(images))
    # independent forward pass with the raw model on normalised pixels
    stack = np.stack(images)[:, None].astype(np.float64)
    x = torch.from_numpy((stack - stack.mean(axis=(1, 2, 3), keepdims=True))
                         / stack.std(axis=(1, 2, 3), keepdims=True)).float()
    with torch.no_grad():
        ref = torch.softmax(clf.model(x).double(), 1).numpy()
    np.testing.assert_allclose(clf.predict_proba(images), ref, rtol=1e-5, atol=1e-6)
    data = load_checkpoint(last.checkpoint)
    assert data["input"]["mode"] == "pixels" and data["class_names"] == CLASSES
    assert data["train"]["step"] == 3 and data["optimizer"] is not None


def test_resume_continues_exactly(tmp_path):
    cfg = _config(steps=12, checkpoint_every=0)
    full = run_training(cfg, tmp_path / "full")
    stop_after = {"n": 0}

    def stop():
        stop_after["n"] += 1
        return stop_after["n"] >= 5

    events = list(train(cfg, tmp_path / "part", stop=stop))
    assert events[-1].phase == "stopped" and events[-1].step == 5
    with pytest.raises(FileExistsError):
        next(train(cfg, tmp_path / "part"))
    resumed = list(train(cfg, tmp_path / "part", resume=True))
    assert [e.step for e in resumed if e.phase == "train"] == list(range(6, 13))
    a = load_checkpoint(full.checkpoint)["state_dict"]
    b = load_checkpoint(resumed[-1].checkpoint)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    rows = _read_csv(tmp_path / "part" / "log.csv")
    assert [int(r["step"]) for r in rows if r["phase"] == "train"] == list(range(1, 13))


def test_stop_event_and_generator_close_save_checkpoint(tmp_path):
    ev = threading.Event()
    ev.set()
    events = list(train(_config(steps=50), tmp_path / "a", stop=ev))
    assert events[-1].phase == "stopped" and events[-1].step == 1
    gen = train(_config(steps=50), tmp_path / "b")
    for e in gen:
        if e.step == 3:
            break
    gen.close()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["train"]["step"] == 3


def test_stop_saves_at_once_without_extra_batches(tmp_path, monkeypatch):
    from napari_aprnet.training import loop

    def no_recalibration(self):
        raise AssertionError("Stop must not run batch norm re-estimation batches")

    monkeypatch.setattr(loop._Run, "recalibrate", no_recalibration)
    ev = threading.Event()
    ev.set()
    events = list(train(_config(steps=50, bn_batches=20), tmp_path / "a", stop=ev))
    assert events[-1].phase == "stopped" and events[-1].step == 1
    assert load_checkpoint(events[-1].checkpoint)["train"]["step"] == 1


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        next(train(_config(steps=2), tmp_path / "none", resume=True))


def test_csv_survives_torn_last_line(tmp_path):
    run = tmp_path / "r"
    list(train(_config(steps=4, checkpoint_every=2), run, stop=lambda: False))
    # simulate a crash after step 4 was logged but before a checkpoint: torn row appended
    with open(run / "log.csv", "a") as f:
        f.write("train,5,0,0.6")
    # the run's checkpoint is at step 4 (final); extending it must rewrite a valid CSV
    list(train(_config(steps=6), run, resume=True))
    rows = _read_csv(run / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_damaged_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a napari-aprnet checkpoint"):
        Classifier.load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a napari-aprnet checkpoint"):
        load_checkpoint(foreign)
    good = tmp_path / "good.pt"
    save_checkpoint(good, model_config={"name": "Pix_A"}, state_dict={}, class_names=["a", "b"],
                    input_spec=InputSpec(mode="pixels").to_dict(), train={})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_classifier_input_checks_and_feature_maps(tmp_path):
    last = run_training(_config(steps=2), tmp_path / "r")
    clf = Classifier.load(last.checkpoint)
    ds = _held_out(1)
    image = ds[0][0]
    # other sizes are resized to the input size: same answer as resizing first
    from napari_aprnet.data import resize_bilinear
    big = resize_bilinear(image, 64)
    np.testing.assert_allclose(clf.predict_proba(big), clf.predict_proba(resize_bilinear(big, 32)), atol=1e-6)
    assert clf.predict_proba(np.stack([image, image])).shape == (2, 2)
    with pytest.raises(ValueError, match="grey"):
        clf.predict_proba(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError):
        clf.predict_proba(np.zeros((32,), np.float32))
    assert clf.layer_names() == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    structure, feats = clf.feature_maps(image, "conv2")
    assert structure is None and feats.shape == (16, 8, 8)
    _, feats0 = clf.feature_maps(image, 0)
    assert feats0.shape == (16, 16, 16)


def test_apr_classifier_feature_maps(tmp_path):
    last = run_training(_config(model="APR_A", steps=2, width=0.25), tmp_path / "r")
    clf = Classifier.load(last.checkpoint)
    image = _held_out(1)[0][0]
    structure, feats = clf.feature_maps(image, "conv1")
    assert feats.ndim == 2 and feats.shape == (structure.n_particles, 8)
    assert structure.shape == (16, 16)  # pooled once
    p = clf.predict_proba([image, image])
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p[0], p[1])


def test_config_validation():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(model="Pix_A").validate()
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="VGG", steps=3).validate()
    fixed = TrainConfig(model="APR_B", epochs=2).validate()
    assert (fixed.weight_decay, fixed.dropout, fixed.spatial_dropout) == (1e-4, 0.5, 0.3)
    stream = TrainConfig(model="APR_B", steps=2).validate()
    assert (stream.weight_decay, stream.dropout, stream.spatial_dropout) == (0.0, 0.0, 0.0)


def test_small_apr_network_learns_faint_two_class_shapes_in_a_few_dozen_steps():
    """Per-image normalisation: objects with contrast down to 0.05 are learnt within 60 small batches."""
    faint = {"radius": [0.2, 0.4], "min_contrast": 0.05}
    cfg = TrainConfig(model="APR_A", data="shapes", size=48, batch_size=16, lr=3e-3, width=0.5, shape_params=faint,
                      classes=CLASSES, seed=0, steps=60, last_window=15, bn_batches=5)
    done = run_training(cfg)
    assert done.metrics["error_mean"] <= 0.2, done.metrics  # chance: 0.5


def test_streaming_runs_do_not_cache_apr(monkeypatch):
    """Streamed images are used once; keeping their APRs would grow memory with every step."""
    from napari_aprnet.data import APRCache
    stored = []
    monkeypatch.setattr(APRCache, "put", lambda self, key, apr: stored.append(key))
    run_training(_config(model="APR_A", width=0.25, steps=3, batch_size=4, bn_batches=1))
    assert stored == []
