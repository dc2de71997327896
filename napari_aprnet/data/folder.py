"""Image-folder datasets: one sub-folder per class (thesis 4.2), or images and masks (segmentation).

Classification: images of any size and common format are read lazily,
converted to float32 in [0, 1], matched to the wanted number of channels
and resized to a square ``size`` by bilinear interpolation (thesis 4.2.1).
Segmentation (:class:`SegmentationFolder`): images (2D, or 3D grey stacks)
and their label masks, kept at their own size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_aprnet.data.transforms import match_channels, resize_bilinear, to_float01
from napari_aprnet.io.images import IMAGE_EXTENSIONS, read_image

__all__ = ["IMAGE_SUFFIXES", "read_image_file", "read_mask_file", "FolderDataset", "SegmentationFolder",
           "split_indices"]

IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS)  # the files io.read_image reads


def _read_file(path: Path) -> np.ndarray:
    """The array stored in an image file, with clear errors."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file; give image files (e.g. {path}/*.png)")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        return np.asarray(read_image(path))
    except (OSError, ValueError, SyntaxError, RuntimeError) as exc:
        raise ValueError(f"could not read {path} as an image ({exc}); use PNG, JPEG, TIFF, BMP or .npy") from exc


def read_image_file(path: str | Path, *, volume: bool = False) -> np.ndarray:
    """Read one 2D image (grey or colour), or with ``volume`` also a 3D grey stack, as float32 in [0, 1].

    A 3D array is a colour image when its last axis holds up to 4 channels;
    otherwise it is a ``(z, y, x)`` stack with ``volume``, and a
    channels-first colour TIFF (3 or 4 leading channels) without.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be decoded as a 2D image (or a 3D stack with ``volume``).
    """
    path = Path(path)
    data = _read_file(path)
    colour = data.ndim == 3 and data.shape[-1] in (1, 2, 3, 4)
    if volume and data.ndim == 3 and not colour:
        return to_float01(data)
    if data.ndim == 3 and data.shape[0] in (3, 4) and not colour:
        data, colour = np.moveaxis(data, 0, -1), True  # channels-first TIFF
    if data.ndim not in (2, 3) or (data.ndim == 3 and not colour):
        what = "2D grey or colour image or 3D grey stack" if volume else "2D grey or colour image"
        raise ValueError(f"{path} is not a {what} (array shape {data.shape})")
    return to_float01(data)


def read_mask_file(path: str | Path) -> np.ndarray:
    """Read a label image (2D or 3D, integers >= 0; 0 background) as int32.

    Raises
    ------
    ValueError
        For colour images, negative or fractional labels, or labels beyond int32.
    """
    path = Path(path)
    data = _read_file(path)
    if data.ndim not in (2, 3):
        raise ValueError(f"{path} is not a 2D or 3D label image (array shape {data.shape})")
    if data.dtype == bool:
        return data.astype(np.int32)
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise ValueError(f"{path} holds fractional values; a mask holds integer labels (0 = background)")
    if data.min() < 0 or data.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{path} holds labels outside 0..{np.iinfo(np.int32).max} (min {data.min()}, "
                         f"max {data.max()}); a mask holds labels >= 0 (0 = background)")
    return data.astype(np.int32)


class FolderDataset:
    """Labelled images in ``root/<class name>/*.<ext>``.

    Parameters
    ----------
    root : str or Path
        Folder with one sub-folder per class (class names are the sorted
        sub-folder names).
    size : int
        Side of the square images returned (bilinear resize).
    channels : int
        1 (grey) or 3 (RGB); other inputs are converted.
    files : list of (Path, int), optional
        Explicit file list (used by :meth:`subset`).
    class_names : sequence of str, optional
        With ``files``: the class names.
    """

    def __init__(self, root: str | Path, size: int = 256, channels: int = 1,
                 files: list[tuple[Path, int]] | None = None, class_names=None):
        self.root, self.size, self.channels = Path(root), int(size), int(channels)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if files is not None:
            self.files, self.class_names = list(files), tuple(class_names)
            return
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.files = []
        kept = []
        for name in classes:
            paths = sorted(p for p in (self.root / name).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if paths:
                self.files.extend((p, len(kept)) for p in paths)
                kept.append(name)
        if len(kept) < 2:
            raise ValueError(
                f"{self.root} must contain at least two sub-folders (one per class) holding images "
                f"({', '.join(IMAGE_SUFFIXES)}); found {len(kept)} class folder(s) with images")
        self.class_names = tuple(kept)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.files], dtype=np.int64)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.files[i]
        image = match_channels(read_image_file(path), self.channels)
        return resize_bilinear(image, self.size), label

    def subset(self, indices) -> "FolderDataset":
        """Dataset of the items at ``indices``."""
        return FolderDataset(self.root, self.size, self.channels,
                             files=[self.files[int(i)] for i in indices], class_names=self.class_names)

    def describe(self) -> dict:
        return {"kind": "folder", "root": str(self.root), "n": len(self), "size": self.size,
                "channels": self.channels}


def split_indices(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random split of ``range(n)`` into (rest, held-out ``fraction``), reproducible by ``seed``."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng([seed, 31]).permutation(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(order[k:]), np.sort(order[:k])


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in files:
                raise ValueError(f"{folder} holds two files named {path.stem} ({files[path.stem].name}, "
                                 f"{path.name}); keep one per name")
            files[path.stem] = path
    return files


class SegmentationFolder:
    """Images and their label masks: ``root/images/<name>.<ext>`` and ``root/masks/<name>.<ext>``.

    An image and its mask have the same name (the extensions may differ,
    e.g. ``a.png`` and ``a.tif``) and the same shape (without the image's
    colour channels). Masks hold integer labels, 0 background (instances,
    or classes for more than two classes). Images are 2D grey or colour,
    or 3D grey stacks ``(z, y, x)``; they are not resized. Item ``i`` is
    ``(image, mask)``: float32 in [0, 1] (channels matched to ``channels``)
    and int32.

    Parameters
    ----------
    root : str or Path
        The folder holding ``images/`` and ``masks/``.
    channels : int
        1 (grey) or 3 (RGB) for 2D images; 3D stacks are grey.
    pairs : list of (Path, Path), optional
        Explicit (image, mask) files (used by :meth:`subset`).

    Raises
    ------
    FileNotFoundError
        If ``images/`` or ``masks/`` is missing.
    ValueError
        If an image has no mask or a mask no image (the names are listed), or there are no images.
    """

    def __init__(self, root: str | Path, channels: int = 1, pairs: list[tuple[Path, Path]] | None = None):
        self.root, self.channels = Path(root), int(channels)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if pairs is not None:
            self.pairs = list(pairs)
            return
        for sub in ("images", "masks"):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(f"{self.root} has no {sub}/ folder; a segmentation dataset is "
                                        f"{self.root}/images/ and {self.root}/masks/ with files of matching names")
        images, masks = _files_by_stem(self.root / "images"), _files_by_stem(self.root / "masks")
        for what, names, where in (("no mask", images.keys() - masks.keys(), "masks/"),
                                   ("no image", masks.keys() - images.keys(), "images/")):
            if names:
                listed = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
                raise ValueError(f"{self.root}: {len(names)} file(s) have {what} of the same name in {where}: "
                                 f"{listed}")
        if not images:
            raise ValueError(f"{self.root / 'images'} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.pairs = [(images[name], masks[name]) for name in sorted(images)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[i]
        mask = read_mask_file(mask_path)
        image = read_image_file(image_path, volume=mask.ndim == 3)
        if mask.ndim == 3 and image.ndim == 3 and self.channels != 1:
            raise ValueError(f"{image_path} is a 3D stack; 3D segmentation takes grey stacks (channels=1)")
        if mask.ndim == 2:
            image = match_channels(image, self.channels)
        spatial = image.shape[:2] if mask.ndim == 2 and image.ndim == 3 else image.shape
        if mask.shape != spatial:
            raise ValueError(f"{mask_path.name} has shape {mask.shape} but its image {image_path.name} has "
                             f"{spatial}; a mask covers its image pixel for pixel")
        return image, mask

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the images (2 or 3), read from the first mask."""
        return read_mask_file(self.pairs[0][1]).ndim

    def subset(self, indices) -> "SegmentationFolder":
        """Dataset of the items at ``indices``."""
        return SegmentationFolder(self.root, self.channels, pairs=[self.pairs[int(i)] for i in indices])

    def describe(self) -> dict:
        return {"kind": "segmentation folder", "root": str(self.root), "n": len(self), "channels": self.channels}
