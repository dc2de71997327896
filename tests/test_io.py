""".apr save/load (round trip, damaged files, atomic writes) and image reading."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import random_structure, random_values

from napari_aprnet import APR, APRFileError
from napari_aprnet.io import apr_h5 as apr_file
from napari_aprnet.io import read_image, write_image


def _params():
    """Parameters of the formation module when present, else a plain dict."""
    try:
        from napari_aprnet.params import APRParameters
    except ImportError:
        return {"rel_error": 0.2, "lambda": 2.5}
    return APRParameters(rel_error=0.2)


def _param_dict(p):
    return p.to_dict() if hasattr(p, "to_dict") else dict(p)


@pytest.fixture
def apr2d():
    s = random_structure((37, 53), seed=11)
    return APR(s, random_values(s, seed=3), _params())


@pytest.mark.parametrize("shape, channels", [((37, 53), None), ((11, 19, 23), None), ((30, 41), 3),
                                             ((1, 1), None), ((6, 5, 7), 2)])
def test_round_trip_is_bit_exact(tmp_path, shape, channels):
    s = random_structure(shape, seed=len(shape))
    v = random_values(s, channels, seed=4)
    v.flat[0] = -0.0  # bit patterns survive
    v.flat[-1] = np.float32(1e-45)
    apr = APR(s, v, _params())
    path = tmp_path / "x.apr"
    apr.save(path)
    back = APR.load(path)
    assert back.equals(apr)
    assert back.values.tobytes() == apr.values.tobytes()
    assert back.values.shape == apr.values.shape
    assert back.structure.level_min == s.level_min
    assert _param_dict(back.parameters) == _param_dict(apr.parameters)
    np.testing.assert_array_equal(back.reconstruct(), apr.reconstruct())


def test_round_trip_without_parameters(tmp_path):
    s = random_structure((9, 9), seed=1)
    apr = APR(s, random_values(s))
    apr.save(tmp_path / "a.apr")
    back = APR.load(tmp_path / "a.apr")
    assert back.parameters is None and back.equals(apr)


def test_file_records_format_and_versions(tmp_path, apr2d):
    import napari_aprnet

    path = tmp_path / "f.apr"
    apr2d.save(path)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["format"] == apr_file.FORMAT_NAME
        assert int(h5.attrs["format_version"]) == apr_file.FORMAT_VERSION
        assert h5.attrs["library_version"] == napari_aprnet.__version__
        assert h5["values"].compression == "gzip"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        APR.load(tmp_path / "nope.apr")


def test_truncated_file(tmp_path, apr2d):
    path = tmp_path / "t.apr"
    apr2d.save(path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, len(data) - 50):
        path.write_bytes(data[:cut])
        with pytest.raises(APRFileError):
            APR.load(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "r.apr"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(APRFileError, match="not a readable"):
        APR.load(path)


def test_hdf5_without_format_tag(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5["data"] = np.zeros(3)
    with pytest.raises(APRFileError, match="not a napari-aprnet"):
        APR.load(path)


def _tamper(path, fn):
    with h5py.File(path, "r+") as h5:
        fn(h5)


def _replace(name, data):
    def fn(h5):
        del h5[name]
        h5[name] = data
    return fn


@pytest.mark.parametrize("case, match", [
    ("values_length", "values"),
    ("values_dtype", "float32"),
    ("coords_out_of_grid", "outside"),
    ("levels_above_max", "level"),
    ("unsorted", "sorted|order"),
    ("gap", "partition"),
    ("missing_values", "missing"),
    ("missing_coords", "missing"),
    ("coords_shape", "structure arrays have shapes"),
    ("values_nan", "NaN or Inf"),
    ("values_inf", "NaN or Inf"),
    ("level_min_negative", "level_min -5 is outside"),
    ("level_min_above_max", "level_min 9 is outside"),
    ("level_min_above_coarsest", "level_min"),
    ("values_external_storage", "other files"),
    ("values_virtual", "other files"),
    ("values_external_link", "ExternalLink"),
    ("coords_soft_link", "SoftLink"),
    ("values_fill_only", "stores 0 bytes"),
    ("levels_longer_than_pixels", "the pixel count"),
    ("newer_version", "version"),
    ("bad_shape", "shape"),
    ("bad_params", "JSON"),
    ("level_max_small", "level_max"),
])
def test_inconsistent_arrays(tmp_path, apr2d, case, match):
    path = tmp_path / "bad.apr"
    apr2d.save(path)
    s = apr2d.structure
    coords, levels = np.array(s.coords), np.array(s.levels)
    if case == "values_length":
        fn = _replace("values", apr2d.values[:-1])
    elif case == "values_dtype":
        fn = _replace("values", apr2d.values.astype(np.float64))
    elif case == "coords_out_of_grid":
        coords[-1, 0] = 10_000
        fn = _replace("structure/coords", coords)
    elif case == "levels_above_max":
        levels[-1] = 200
        fn = _replace("structure/levels", levels)
    elif case == "unsorted":
        lo = int(s.level_offsets[s.level_max])
        coords[lo:] = coords[lo:][::-1]  # finest level in reverse order
        fn = _replace("structure/coords", coords)
    elif case == "gap":
        def fn(h5):
            _replace("structure/coords", coords[1:])(h5)
            _replace("structure/levels", levels[1:])(h5)
            _replace("values", apr2d.values[1:])(h5)
    elif case == "missing_values":
        def fn(h5):
            del h5["values"]
    elif case == "missing_coords":
        def fn(h5):
            del h5["structure/coords"]
    elif case == "coords_shape":
        fn = _replace("structure/coords", coords[:, :1].copy())
    elif case == "newer_version":
        def fn(h5):
            h5.attrs["format_version"] = apr_file.FORMAT_VERSION + 1
    elif case == "bad_shape":
        def fn(h5):
            h5["structure"].attrs["shape"] = np.array([0, 5])
    elif case == "bad_params":
        def fn(h5):
            h5.attrs["parameters"] = "{not json"
    elif case == "level_max_small":
        def fn(h5):
            h5["structure"].attrs["level_max"] = 2
    elif case in ("values_nan", "values_inf"):
        bad = np.array(apr2d.values)
        bad[len(bad) // 2] = np.nan if case == "values_nan" else -np.inf
        fn = _replace("values", bad)
    elif case.startswith("level_min"):
        value = {"level_min_negative": -5, "level_min_above_max": 9,
                 "level_min_above_coarsest": int(s.levels.min()) + 1}[case]

        def fn(h5):
            h5["structure"].attrs["level_min"] = value
    elif case == "values_external_storage":
        other = tmp_path / "secret.bin"  # any local file the .apr would read
        other.write_bytes(np.asarray(apr2d.values, np.float32).tobytes())

        def fn(h5):
            del h5["values"]
            h5.create_dataset("values", shape=apr2d.values.shape, dtype=np.float32,
                              external=[(str(other), 0, apr2d.values.nbytes)])
    elif case == "values_virtual":
        other = tmp_path / "other.h5"
        with h5py.File(other, "w") as o:
            o["v"] = apr2d.values

        def fn(h5):
            del h5["values"]
            layout = h5py.VirtualLayout(shape=apr2d.values.shape, dtype=np.float32)
            layout[:] = h5py.VirtualSource(str(other), "v", shape=apr2d.values.shape)
            h5.create_virtual_dataset("values", layout)
    elif case == "values_external_link":
        other = tmp_path / "other.h5"
        with h5py.File(other, "w") as o:
            o["v"] = apr2d.values

        def fn(h5):
            del h5["values"]
            h5["values"] = h5py.ExternalLink(str(other), "v")
    elif case == "coords_soft_link":
        def fn(h5):
            h5["copy"] = np.array(h5["structure/coords"])
            del h5["structure/coords"]
            h5["structure/coords"] = h5py.SoftLink("/copy")
    elif case == "values_fill_only":
        def fn(h5):  # a tiny file declaring a large dataset that was never written
            del h5["values"]
            h5.create_dataset("values", shape=(len(levels), 4096), dtype=np.float32, chunks=(64, 64))
    elif case == "levels_longer_than_pixels":
        def fn(h5):
            n = s.n_pixels + 1
            del h5["structure/levels"], h5["structure/coords"], h5["values"]
            h5.create_dataset("structure/levels", shape=(n,), dtype=np.uint8)
            h5.create_dataset("structure/coords", shape=(n, 2), dtype=np.int32)
            h5.create_dataset("values", shape=(n,), dtype=np.float32)
    _tamper(path, fn)
    with pytest.raises(APRFileError, match=match):
        APR.load(path)


def test_saving_nan_values_is_refused(tmp_path, apr2d):
    values = np.array(apr2d.values)
    values[0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        APR(apr2d.structure, values).save(tmp_path / "nan.apr")
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_keeps_old_file_on_failure(tmp_path, apr2d, monkeypatch):
    path = tmp_path / "keep.apr"
    apr2d.save(path)
    before = path.read_bytes()
    other = apr2d.with_values(np.zeros(apr2d.n_particles))
    real = apr_file._write_contents

    def failing(h5, apr):
        real(h5, apr)  # everything written ...
        raise OSError("disk full (simulated)")  # ... then the write fails

    monkeypatch.setattr(apr_file, "_write_contents", failing)
    with pytest.raises(OSError, match="simulated"):
        other.save(path)
    assert path.read_bytes() == before
    assert APR.load(path).equals(apr2d)
    assert sorted(os.listdir(tmp_path)) == ["keep.apr"]  # no temporary file left behind


def test_save_replaces_existing_file(tmp_path, apr2d):
    path = tmp_path / "r.apr"
    apr2d.save(path)
    other = apr2d.with_values(np.ones(apr2d.n_particles))
    other.save(path)
    assert APR.load(path).equals(other)


def test_save_into_missing_directory(tmp_path, apr2d):
    with pytest.raises(FileNotFoundError, match="directory"):
        apr2d.save(tmp_path / "no" / "such" / "x.apr")


# ----- image reading ---------------------------------------------------------

def test_read_image_formats(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (21, 34), dtype=np.uint8)
    rgb = rng.integers(0, 255, (21, 34, 3), dtype=np.uint8)
    vol = rng.random((5, 6, 7)).astype(np.float32)
    for name, img in (("a.png", gray), ("b.png", rgb), ("c.tif", vol), ("d.tiff", gray),
                      ("e.npy", vol), ("f.npy", gray.astype(np.uint16))):
        write_image(tmp_path / name, img)
        back = read_image(tmp_path / name)
        assert back.dtype == img.dtype
        np.testing.assert_array_equal(back, img)
    write_image(tmp_path / "g.jpg", rgb)
    back = read_image(tmp_path / "g.jpg")
    assert back.shape == rgb.shape and back.dtype == np.uint8


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "x.bmpx").write_bytes(b"abc")
    with pytest.raises(ValueError, match="unsupported extension"):
        read_image(tmp_path / "x.bmpx")
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="not a PNG file"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="cannot read|holds no pixels .*damaged"):
        read_image(tmp_path / "bad.tif")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read"):
        read_image(tmp_path / "obj.npy")
    with pytest.raises(ValueError, match="directory"):
        read_image(tmp_path)


def test_write_image_is_atomic_on_failure(tmp_path, monkeypatch):
    import tifffile

    path = tmp_path / "i.tif"
    write_image(path, np.zeros((4, 4), np.uint8))
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("simulated")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError):
        write_image(path, np.ones((4, 4), np.uint8))
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["i.tif"]


@pytest.mark.parametrize("name,content,match", [
    ("a.tif", b"this is text", r"not a TIFF file \(no TIFF header\) despite its .tif extension"),
    ("a.tiff", b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "is a PNG file despite its .tiff extension"),
    ("a.png", b"nope", r"not a PNG file \(no PNG header\)"),
    ("a.jpg", b"II*\x00" + b"\0" * 32, "is a TIFF file despite its .jpg extension"),
    ("a.png", b"", "an empty file"),
])
def test_misnamed_or_foreign_image_files_say_what_they_are(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        read_image(path)
    assert len(str(info.value).splitlines()) == 1


def test_predict_on_a_directory_says_so(tmp_path, capsys):
    from napari_aprnet.data import read_image_file
    with pytest.raises(ValueError, match="is a directory, not an image file"):
        read_image_file(tmp_path)
