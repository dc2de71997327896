"""Image-level class annotations stored next to the images (no GUI imports).

A folder of images gets one CSV file, ``aprnet_labels.csv``, with the columns
``filename,label``. Every change is written at once and atomically (a temporary
file in the same folder, flushed and fsynced, then ``os.replace``), so a crash
mid-write leaves either the old or the new file, never a torn one. Reopening
the folder restores the labels. :meth:`AnnotationSet.export` writes a folder
dataset (``out/<class>/<image>``) that the training code reads.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_aprnet.io import IMAGE_EXTENSIONS, read_image
from napari_aprnet.io._atomic import atomic_write_text

__all__ = ["LABELS_FILE", "IMAGE_SUFFIXES", "AnnotationSet"]

LABELS_FILE = "aprnet_labels.csv"
#: Files listed for annotation (the extensions :func:`napari_aprnet.io.read_image` reads).
IMAGE_SUFFIXES = tuple(IMAGE_EXTENSIONS)


def _check_class_name(name: str) -> str:
    name = str(name).strip()
    if not name or name in (".", "..") or any(c in name for c in '/\\:,"\n\r'):
        raise ValueError(f"invalid class name {name!r}: use a non-empty name without / \\ : , or quotes")
    return name


def _is_image_name(name: str) -> bool:
    """True for the names listed as images: a plain, visible file name with an image suffix."""
    return (bool(name) and name == Path(name).name and "\\" not in name and not name.startswith(".")
            and Path(name).suffix.lower() in IMAGE_SUFFIXES)


class AnnotationSet:
    """Class labels of the images in one folder.

    Parameters
    ----------
    folder : path
        Folder holding the images (not searched recursively).
    class_names : sequence of str, optional
        The classes offered. Labels already in the CSV are added if missing.

    Attributes
    ----------
    folder : Path
    images : list of str
        Image file names, sorted.
    class_names : list of str
    """

    def __init__(self, folder: str | os.PathLike, class_names: Sequence[str] | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"annotation folder {str(self.folder)!r} does not exist or is not a folder")
        self.images = sorted(p.name for p in self.folder.iterdir() if p.is_file() and _is_image_name(p.name))
        self._labels: dict[str, str] = self._read_labels()
        names = [_check_class_name(c) for c in (class_names or [])]
        for label in self._labels.values():
            if label not in names:
                names.append(label)
        self.class_names = names

    # ------------------------------------------------------------------ I/O
    @property
    def labels_path(self) -> Path:
        """The CSV file holding the labels."""
        return self.folder / LABELS_FILE

    def _read_labels(self) -> dict[str, str]:
        path = self.labels_path
        if not path.exists():
            return {}
        labels: dict[str, str] = {}
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header != ["filename", "label"]:
                raise ValueError(f"{path} is not an aprnet labels file (expected header 'filename,label', "
                                 f"got {header!r}); move it away to start fresh")
            for row in reader:
                if not row:
                    continue
                where = f"{path} line {reader.line_num}"
                if len(row) != 2:
                    raise ValueError(f"{where}: expected 'filename,label', got {row!r}; fix or remove the row")
                name, label = row
                if not _is_image_name(name):
                    raise ValueError(f"{where}: {name!r} is not an image file name of this folder (a plain "
                                     f"name ending in one of {', '.join(IMAGE_SUFFIXES)}); fix or remove the row")
                try:
                    labels[name] = _check_class_name(label)
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}; fix or remove the row") from None
        return labels

    def _write_labels(self, labels: dict[str, str]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["filename", "label"])
        for name in sorted(labels):
            writer.writerow([name, labels[name]])
        atomic_write_text(self.labels_path, buf.getvalue())

    # ------------------------------------------------------------- labels
    @property
    def labels(self) -> dict[str, str]:
        """A copy of the mapping ``filename -> class name``."""
        return dict(self._labels)

    def label_of(self, filename: str) -> str | None:
        """Return the label of ``filename`` or None."""
        return self._labels.get(filename)

    def set_label(self, filename: str, label: str | None) -> None:
        """Assign ``label`` to ``filename`` (None clears it) and save at once."""
        if filename not in self.images:
            raise KeyError(f"{filename!r} is not an image in {self.folder}")
        new = dict(self._labels)
        if label is None:
            if new.pop(filename, None) is None:
                return
        else:
            label = _check_class_name(label)
            new[filename] = label
        self._write_labels(new)
        self._labels = new
        if label is not None and label not in self.class_names:
            self.class_names.append(label)

    def next_unlabelled(self, start: int = 0) -> int | None:
        """Index of the first unlabelled image at or after ``start`` (wrapping), or None."""
        n = len(self.images)
        for k in range(n):
            i = (start + k) % n
            if self.images[i] not in self._labels:
                return i
        return None

    def counts(self) -> dict[str, int]:
        """Number of labelled images per class (every class listed)."""
        out = {c: 0 for c in self.class_names}
        for label in self._labels.values():
            out[label] = out.get(label, 0) + 1
        return out

    def image(self, index: int) -> np.ndarray:
        """Read image number ``index``."""
        return read_image(self.folder / self.images[index])

    # ------------------------------------------------------------- export
    def export(self, out_dir: str | os.PathLike) -> Path:
        """Copy the labelled images into ``out_dir/<class>/`` (a folder dataset).

        The dataset is built in a temporary sibling folder and renamed into
        place, so ``out_dir`` is either complete or absent. ``out_dir`` must
        not exist yet.

        Returns
        -------
        Path
            ``out_dir``.
        """
        out = Path(out_dir)
        if out.exists():
            raise FileExistsError(f"export folder {str(out)!r} already exists; choose a new folder")
        if not self._labels:
            raise ValueError("no image is labelled yet; label some images before exporting")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for name, label in sorted(self._labels.items()):
                src = self.folder / name
                if not src.exists():
                    continue
                (tmp / label).mkdir(exist_ok=True)
                shutil.copy2(src, tmp / label / name)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out
