"""The bundled shapes classifier: loads everywhere a checkpoint is taken and names the sample shapes right."""
from __future__ import annotations

import numpy as np
import pytest

import napari_aprnet
from napari_aprnet.classify import Classifier
from napari_aprnet.cli import main
from napari_aprnet.io import write_image
from napari_aprnet.samples import shapes_gallery


@pytest.fixture(scope="module")
def bundled():
    return Classifier.bundled("shapes")


def test_bundled_model_is_the_thesis_network(bundled):
    assert napari_aprnet.Classifier is Classifier
    assert bundled.model.config["name"] == "APR_B" and bundled.mode == "apr" and bundled.input_size == 256
    assert bundled.class_names == ("triangle", "square", "circle", "fuzzy_triangle", "fuzzy_square", "fuzzy_circle")
    assert bundled.spec.normalisation == "image"


def test_bundled_model_classifies_the_sample_images(bundled):
    images, names = shapes_gallery()
    assert bundled.predict(images) == names
    again = Classifier.load("bundled:shapes")
    np.testing.assert_array_equal(again.predict_proba(images), bundled.predict_proba(images))


def test_bundled_model_is_right_on_fresh_images(bundled):
    from napari_aprnet.data import ShapesDataset
    fresh = ShapesDataset(6, seed=987654, size=256, split=2)  # 36 images never seen in training
    pred = bundled.predict_proba([fresh[i][0] for i in range(len(fresh))], batch_size=36).argmax(1)
    assert (pred == fresh.labels).mean() >= 34 / 36


def test_unknown_bundled_model_is_a_clear_error():
    with pytest.raises(ValueError, match="bundled models: shapes"):
        Classifier.load("bundled:cats")


def test_cli_takes_bundled_checkpoints(tmp_path, capsys):
    images, names = shapes_gallery()
    paths = []
    for image, name in zip(images[[2, 3]], np.asarray(names)[[2, 3]]):
        paths.append(tmp_path / f"{name}.png")
        write_image(paths[-1], (image * 255).round().astype(np.uint8))
    assert main(["predict", "bundled:shapes", *map(str, paths), "--top", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split(": ")[1].startswith("circle ") and out[1].split(": ")[1].startswith("fuzzy_triangle ")
    assert main(["eval", "bundled:shapes", "--n", "3", "--seed", "5"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("18 images") and float(first.split("accuracy ")[1].split()[0]) >= 16 / 18
    assert main(["predict", "bundled:nope", str(paths[0])]) != 0
    assert "bundled models: shapes" in capsys.readouterr().err
