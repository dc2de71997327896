"""Segmentation data: the synthetic nuclei generators and the images/masks folder dataset."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_aprnet.data import NucleiDataset, NucleiParams, NucleiStream, SegmentationFolder, make_nuclei_splits
from napari_aprnet.io.images import write_image


def _touching_pairs(mask: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different instance labels that are face neighbours somewhere."""
    pairs = set()
    for axis in range(mask.ndim):
        a = np.moveaxis(mask, axis, 0)[:-1].ravel()
        b = np.moveaxis(mask, axis, 0)[1:].ravel()
        both = (a > 0) & (b > 0) & (a != b)
        pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[both].tolist(), b[both].tolist())}
    return pairs


# ----- nuclei -------------------------------------------------------------------

def test_nuclei_deterministic_per_seed_and_index():
    a, b = NucleiDataset(3, seed=5, shape=(64, 64)), NucleiDataset(3, seed=5, shape=(64, 64))
    for i in range(3):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
    assert not np.array_equal(a[0][0], a[1][0])
    assert not np.array_equal(a[0][0], NucleiDataset(3, seed=6, shape=(64, 64))[0][0])
    splits = make_nuclei_splits(2, 2, 2, seed=5, shape=(64, 64))
    assert not np.array_equal(splits["train"][0][0], splits["test"][0][0])
    np.testing.assert_array_equal(splits["train"][1][1], a[1][1])
    stream = NucleiStream(seed=5, shape=(64, 64))
    np.testing.assert_array_equal(stream.image(7)[0], NucleiStream(seed=5, shape=(64, 64)).image(7)[0])
    assert not np.array_equal(stream.image(0)[0], a[0][0])
    with pytest.raises(IndexError):
        a[3]


def test_nuclei_masks_are_instances_that_match_the_intensity():
    ds = NucleiDataset(6, seed=1, shape=(128, 128))
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.dtype == np.float32 and image.shape == (128, 128) and mask.dtype == np.int32
        n = int(mask.max())
        assert n >= 5 and set(np.unique(mask)) == set(range(n + 1))  # labels 0..n, every one present
        for label in range(1, n + 1):  # each instance one connected piece
            assert ndimage.label(mask == label)[1] == 1
        inside, outside = image[mask > 0].mean(), image[mask == 0].mean()
        assert inside > outside + 0.1
        # every nucleus is brighter than the background around it
        means = ndimage.mean(image, mask, index=np.arange(1, n + 1))
        assert (means > outside).all()
        # shape variety: sizes differ
        sizes = np.bincount(mask.ravel())[1:]
        assert sizes.max() > 2 * sizes.min()


def test_nuclei_touching_pairs_exist_and_others_stay_apart():
    ds = NucleiDataset(4, seed=2, shape=(128, 128))
    touching = [_touching_pairs(ds[i][1]) for i in range(len(ds))]
    assert sum(len(t) for t in touching) >= 3
    for i, pairs in enumerate(touching):  # a nucleus touches at most its partner
        labels = [x for p in pairs for x in p]
        assert len(labels) == len(set(labels)), f"image {i}: a nucleus touches two others"
    none = NucleiDataset(2, seed=2, shape=(128, 128), params=NucleiParams(touching=0.0))
    assert all(not _touching_pairs(none[i][1]) for i in range(2))


def test_nuclei_3d():
    ds = NucleiDataset(4, seed=3, shape=(32, 64, 64), ndim=3)
    image, mask = ds[0]
    assert image.shape == mask.shape == (32, 64, 64)
    assert mask.max() >= 3 and image[mask > 0].mean() > image[mask == 0].mean() + 0.1
    assert any(_touching_pairs(ds[i][1]) for i in range(len(ds)))
    assert NucleiDataset(1, ndim=3).shape == (64, 128, 128) and NucleiDataset(1).shape == (256, 256)


def test_nuclei_noise_and_blur_vary():
    lo = NucleiParams(photons=(20.0, 20.0), blur=(0.8, 0.8))
    hi = NucleiParams(photons=(5000.0, 5000.0), blur=(0.8, 0.8))
    a, b = NucleiDataset(1, 4, (64, 64), params=lo)[0], NucleiDataset(1, 4, (64, 64), params=hi)[0]
    np.testing.assert_array_equal(a[1], b[1])  # same nuclei, other photon count
    far = ndimage.distance_transform_edt(a[1] == 0) > 6  # background beyond the blur of any nucleus
    assert a[0][far].std() > 5 * b[0][far].std()


@pytest.mark.parametrize("bad", [dict(radius=(1.0, 5.0)), dict(elongation=(0.5, 1.0)), dict(wobble=0.6),
                                 dict(coverage=(0.2, 0.9)), dict(photons=(0.0, 10.0)), dict(blur=(2.0, 1.0))])
def test_nuclei_params_checked(bad):
    with pytest.raises(ValueError):
        NucleiParams(**bad)


def test_nuclei_bad_shapes():
    with pytest.raises(ValueError, match="2D or 3D"):
        NucleiDataset(1, shape=(8, 64))[0]
    with pytest.raises(ValueError, match="n >= 1"):
        NucleiDataset(0)


# ----- folder --------------------------------------------------------------------

def _folder(tmp_path, n=3):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    ds = NucleiDataset(n, seed=0, shape=(32, 40))
    for i in range(n):
        image, mask = ds[i]
        write_image(tmp_path / "images" / f"im{i}.png", (np.clip(image, 0, 1) * 255).astype(np.uint8))
        write_image(tmp_path / "masks" / f"im{i}.tif", mask.astype(np.uint16))
    return ds


def test_segmentation_folder_reads_pairs(tmp_path):
    ds = _folder(tmp_path)
    folder = SegmentationFolder(tmp_path)
    assert len(folder) == 3 and folder.ndim == 2
    image, mask = folder[1]
    assert image.dtype == np.float32 and image.shape == (32, 40) and 0 <= image.min() <= image.max() <= 1
    np.testing.assert_array_equal(mask, ds[1][1])
    sub = folder.subset([2])
    np.testing.assert_array_equal(sub[0][1], ds[2][1])
    rgb = SegmentationFolder(tmp_path, channels=3)[0][0]
    assert rgb.shape == (32, 40, 3)


def test_segmentation_folder_3d(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image, mask = NucleiDataset(1, seed=0, shape=(16, 32, 32), ndim=3)[0]
    tifffile.imwrite(tmp_path / "images" / "v.tif", (np.clip(image, 0, 1) * 65535).astype(np.uint16))
    np.save(tmp_path / "masks" / "v.npy", mask)
    folder = SegmentationFolder(tmp_path)
    assert folder.ndim == 3
    im, m = folder[0]
    assert im.shape == (16, 32, 32) and np.abs(im - np.clip(image, 0, 1)).max() < 1e-4
    np.testing.assert_array_equal(m, mask)


def test_segmentation_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images/"):
        SegmentationFolder(tmp_path)
    _folder(tmp_path)
    (tmp_path / "masks" / "im1.tif").unlink()
    with pytest.raises(ValueError, match="no mask of the same name in masks/: im1"):
        SegmentationFolder(tmp_path)
    write_image(tmp_path / "masks" / "im1.tif", np.zeros((32, 41), np.uint16))
    write_image(tmp_path / "masks" / "extra.tif", np.zeros((32, 40), np.uint16))
    with pytest.raises(ValueError, match="no image of the same name in images/: extra"):
        SegmentationFolder(tmp_path)
    (tmp_path / "masks" / "extra.tif").unlink()
    folder = SegmentationFolder(tmp_path)
    with pytest.raises(ValueError, match=r"im1.tif has shape \(32, 41\) but its image im1.png has \(32, 40\)"):
        folder[1]
    np.save(tmp_path / "masks" / "im1.npy", np.full((32, 40), 0.5))
    (tmp_path / "masks" / "im1.tif").unlink()
    with pytest.raises(ValueError, match="fractional"):
        SegmentationFolder(tmp_path)[1]
    np.save(tmp_path / "masks" / "im1.npy", np.full((32, 40), -1))
    with pytest.raises(ValueError, match="labels >= 0"):
        SegmentationFolder(tmp_path)[1]
