"""Annotation store: labels saved atomically next to the images, restored, exported."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

import napari_aprnet.annotations as annotations_module
from napari_aprnet.annotations import LABELS_FILE, AnnotationSet


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        np.save(tmp_path / f"img{i}.npy", rng.random((16, 16)).astype(np.float32))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_lists_images_only_sorted(image_folder):
    a = AnnotationSet(image_folder, ["cat", "dog"])
    assert a.images == [f"img{i}.npy" for i in range(5)]
    assert a.class_names == ["cat", "dog"]
    assert a.image(2).shape == (16, 16)


def test_labels_written_immediately_and_restored(image_folder):
    a = AnnotationSet(image_folder, ["cat", "dog"])
    a.set_label("img1.npy", "dog")
    assert read_csv(image_folder / LABELS_FILE) == [["filename", "label"], ["img1.npy", "dog"]]
    a.set_label("img0.npy", "cat")
    a.set_label("img1.npy", "cat")  # relabel
    a.set_label("img3.npy", "bird")  # new class on the fly
    b = AnnotationSet(image_folder)  # reopen without class names
    assert b.labels == {"img0.npy": "cat", "img1.npy": "cat", "img3.npy": "bird"}
    assert b.class_names == ["cat", "bird"]
    b.set_label("img0.npy", None)
    assert AnnotationSet(image_folder).labels == {"img1.npy": "cat", "img3.npy": "bird"}
    assert b.next_unlabelled(0) == 0 and b.next_unlabelled(1) == 2
    assert b.counts() == {"cat": 1, "bird": 1}


def test_crash_mid_write_keeps_previous_file(image_folder, monkeypatch):
    a = AnnotationSet(image_folder, ["cat", "dog"])
    a.set_label("img0.npy", "cat")
    before = (image_folder / LABELS_FILE).read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(annotations_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        a.set_label("img1.npy", "dog")
    monkeypatch.undo()
    assert (image_folder / LABELS_FILE).read_bytes() == before
    assert a.labels == {"img0.npy": "cat"}  # in-memory state matches the file
    assert not [p for p in os.listdir(image_folder) if p.endswith(".tmp")]  # temp file cleaned up
    # a stray temp file from a killed process is ignored on reopen
    (image_folder / f".{LABELS_FILE}.abc.tmp").write_text("filename,label\nimg2.npy,do")
    assert AnnotationSet(image_folder).labels == {"img0.npy": "cat"}


def test_bad_inputs(image_folder, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AnnotationSet(image_folder / "missing")
    a = AnnotationSet(image_folder, ["cat"])
    with pytest.raises(KeyError, match="not an image"):
        a.set_label("nope.png", "cat")
    with pytest.raises(ValueError, match="invalid class name"):
        a.set_label("img0.npy", "a/b")
    with pytest.raises(ValueError, match="invalid class name"):
        AnnotationSet(image_folder, [""])
    (image_folder / LABELS_FILE).write_text("something,else\n")
    with pytest.raises(ValueError, match="not an aprnet labels file"):
        AnnotationSet(image_folder)


def test_export_folder_dataset(image_folder, tmp_path_factory):
    from napari_aprnet.data.folder import FolderDataset

    a = AnnotationSet(image_folder, ["cat", "dog"])
    with pytest.raises(ValueError, match="no image is labelled"):
        a.export(tmp_path_factory.mktemp("x") / "empty")
    a.set_label("img0.npy", "cat")
    a.set_label("img2.npy", "dog")
    a.set_label("img4.npy", "dog")
    out = tmp_path_factory.mktemp("export") / "ds"
    assert a.export(out) == out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == \
        ["cat/img0.npy", "dog/img2.npy", "dog/img4.npy"]
    np.testing.assert_array_equal(np.load(out / "dog" / "img2.npy"), np.load(image_folder / "img2.npy"))
    with pytest.raises(FileExistsError, match="already exists"):
        a.export(out)
    ds = FolderDataset(out, size=16)
    assert len(ds) == 3
    assert sorted(ds.class_names) == ["cat", "dog"]


@pytest.mark.parametrize("row", ["a.png,../../x", "b.png,/abs/dir", "../secret.txt,cats", "/etc/passwd.png,cats",
                                 "sub/a.png,cats", ".hidden.png,cats", "a.png,", "a.png", "a.png,cats,dogs",
                                 "notes.txt,cats", "a.png,..", 'a.png,"x\\y"'])
def test_labels_file_rows_are_validated_like_set_label(image_folder, tmp_path_factory, row):
    """Rows that set_label would refuse make reading fail with their line number; nothing escapes on export."""
    (image_folder / LABELS_FILE).write_text(f"filename,label\nc.png,dogs\n{row}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{LABELS_FILE} line 3: .*fix or remove the row"):
        AnnotationSet(image_folder)
