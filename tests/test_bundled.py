"""The bundled models: they load everywhere a checkpoint is taken; the shapes classifier names the sample
shapes right and the nuclei segmenter finds the nuclei of fresh images and of the sample."""
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
    with pytest.raises(ValueError, match="bundled models: nuclei2d, shapes"):
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
    assert "bundled models: nuclei2d, shapes" in capsys.readouterr().err


def _segmentation_scores(segmenter, pairs, split_touching: bool = True):
    """Scores of the segmenter's instances, or (``split_touching=False``) of its foreground's connected parts."""
    from napari_aprnet.training.seg_metrics import SegmentationCounts, label_instances

    counts = SegmentationCounts()
    for image, truth in pairs:
        result = segmenter.segment(image)
        objects = result.labels if split_touching else label_instances(result.classes > 0)
        counts.add(objects, truth, instances=objects)
    return counts


def test_bundled_segmenter_finds_nuclei_and_keeps_touching_ones_apart():
    from napari_aprnet.data.nuclei import NucleiDataset, NucleiParams
    from napari_aprnet.training.segment import Segmenter

    segmenter = Segmenter.load("bundled:nuclei2d")
    assert segmenter.mode == "apr" and segmenter.ndim == 2
    assert segmenter.class_names == ("background", "interior", "boundary")
    fresh = NucleiDataset(3, seed=424242, shape=(192, 192), split=2)  # a seed and size never used in training
    counts = _segmentation_scores(segmenter, [fresh[i] for i in range(len(fresh))])
    assert counts.iou >= 0.9 and counts.f1 >= 0.85, (counts.iou, counts.f1)
    # every nucleus one of a touching pair: the boundary class parts them, the bare foreground would not
    pairs = NucleiDataset(2, seed=424243, shape=(192, 192), split=2, params=NucleiParams(touching=1.0))
    images = [pairs[i] for i in range(len(pairs))]
    apart = _segmentation_scores(segmenter, images)
    merged = _segmentation_scores(segmenter, images, split_touching=False)
    assert apart.f1 >= 0.8 and apart.f1 > merged.f1 + 0.1, (apart.f1, merged.f1)
