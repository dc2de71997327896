"""Image-folder datasets: one sub-folder per class (thesis 4.2).

Images of any size and common format are read lazily, converted to float32
in [0, 1], matched to the wanted number of channels and resized to a square
``size`` by bilinear interpolation (thesis 4.2.1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_aprnet.data.transforms import match_channels, resize_bilinear, to_float01
from napari_aprnet.io.images import IMAGE_EXTENSIONS, read_image

__all__ = ["IMAGE_SUFFIXES", "read_image_file", "FolderDataset", "split_indices"]

IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS)  # the files io.read_image reads


def read_image_file(path: str | Path) -> np.ndarray:
    """Read one 2D image (grey or colour) as float32 in [0, 1].

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be decoded as a 2D image.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file; give image files (e.g. {path}/*.png)")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        data = read_image(path)
    except (OSError, ValueError, SyntaxError, RuntimeError) as exc:
        raise ValueError(f"could not read {path} as an image ({exc}); use PNG, JPEG, TIFF, BMP or .npy") from exc
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[0] in (3, 4) and data.shape[-1] not in (1, 2, 3, 4):
        data = np.moveaxis(data, 0, -1)  # channels-first TIFF
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] > 4):
        raise ValueError(f"{path} is not a 2D grey or colour image (array shape {data.shape})")
    return to_float01(data)


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
