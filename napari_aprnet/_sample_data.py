"""npe2 sample data (imports no napari): layer data tuples of the bundled samples."""
from __future__ import annotations

from napari_aprnet import samples

__all__ = ["blobs_3d_sample", "natural_photo_sample", "nuclei_sample", "shapes_sample"]


def shapes_sample() -> list[tuple]:
    """One synthetic-shapes image per class, stacked (slider moves through classes)."""
    images, names = samples.shapes_gallery(size=256, seed=0)
    return [(images, {"name": "shapes", "axis_labels": ("class", "y", "x"),
                      "metadata": {"class_names": list(names)}}, "image")]


def blobs_3d_sample() -> list[tuple]:
    """A 3D fluorescence-like stack of blobs with Poisson noise (seeded)."""
    return [(samples.fluorescence_blobs((32, 128, 128), 40, seed=0),
             {"name": "blobs 3D", "colormap": "magma"}, "image")]


def natural_photo_sample() -> list[tuple]:
    """A 512 x 512 grayscale photograph (scikit-image's "camera")."""
    return [(samples.natural_photo(), {"name": "camera"}, "image")]


def nuclei_sample() -> list[tuple]:
    """A 512 x 512 synthetic image of nuclei (the bundled segmentation model's kind) and its true instances."""
    image, labels = samples.nuclei_image((512, 512))
    return [(image, {"name": "nuclei", "colormap": "gray"}, "image"),
            (labels, {"name": "nuclei true instances", "visible": False, "opacity": 0.5}, "labels")]
