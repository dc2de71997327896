"""``aprnet convert / info / sweep``: printed numbers match the APR computed in-process."""
from __future__ import annotations

import numpy as np
import pytest

from napari_aprnet import APR, APRParameters
from napari_aprnet.cli import main
from napari_aprnet.io import read_image, write_image
from napari_aprnet.render import level_map_rgb


def _blob_image(shape, seed=0):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids)
    img = 200.0 * (r2 < 0.4) + 20.0 + 5.0 * rng.standard_normal(shape)
    return np.clip(img, 0, 255)


@pytest.fixture
def npy_image(tmp_path):
    path = tmp_path / "blob.npy"
    np.save(path, _blob_image((40, 52)).astype(np.float32))
    return path


def _fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if ": " in line and not line.startswith(" "):
            key, value = line.split(": ", 1)
            out[key] = value
    return out


def _check_numbers(fields, apr, image, mode="constant"):
    mean_err, max_err = apr.reconstruction_error(image, mode=mode)
    assert int(fields["particles"]) == apr.n_particles
    assert float(fields["computational ratio"]) == pytest.approx(apr.computational_ratio, abs=1e-4)
    assert fields["levels"] == f"{apr.level_min}..{apr.level_max}"
    assert float(fields[f"mean abs error ({mode})"]) == pytest.approx(mean_err, rel=1e-5)
    assert float(fields[f"max abs error ({mode})"]) == pytest.approx(max_err, rel=1e-5)


def test_convert_npy_with_pngs(tmp_path, npy_image, capsys):
    out, lm, rc = tmp_path / "o.apr", tmp_path / "levels.png", tmp_path / "recon.png"
    code = main(["convert", str(npy_image), "--rel-error", "0.2", "-o", str(out),
                 "--level-map", str(lm), "--reconstruction", str(rc)])
    assert code == 0
    fields = _fields(capsys.readouterr().out)
    image = np.load(npy_image)
    apr = APR.from_image(image, 0.2)
    _check_numbers(fields, apr, image)
    saved = APR.load(out)
    assert saved.equals(apr)
    assert saved.parameters == APRParameters(rel_error=0.2)
    levels_png = read_image(lm)
    np.testing.assert_array_equal(levels_png, level_map_rgb(apr.reconstruct(mode="level"),
                                                            apr.level_min, apr.level_max))
    recon_png = read_image(rc)
    assert recon_png.shape == image.shape and recon_png.dtype == np.uint8
    assert int(fields["particles"]) < image.size  # the blob image is compressible


def test_convert_rgb_png_uses_channels(tmp_path, capsys):
    rgb = np.stack([_blob_image((33, 45), s) for s in range(3)], axis=-1).astype(np.uint8)
    path = tmp_path / "rgb.png"
    write_image(path, rgb)
    out = tmp_path / "rgb.apr"
    assert main(["convert", str(path), "-o", str(out)]) == 0
    fields = _fields(capsys.readouterr().out)
    apr = APR.from_image(rgb, 0.1, channel_axis=-1)
    _check_numbers(fields, apr, rgb)
    saved = APR.load(out)
    assert saved.n_channels == 3 and saved.equals(apr)


def test_convert_tif_3d_with_parameters(tmp_path, capsys):
    vol = _blob_image((12, 18, 20)).astype(np.uint16)
    path = tmp_path / "vol.tif"
    write_image(path, vol)
    out = tmp_path / "vol.apr"
    args = ["convert", str(path), "-o", str(out), "--rel-error", "0.15", "--lambda", "2",
            "--ip-th", "5", "--sigma-th", "1.5", "--grad-th", "0.5", "--mode", "smooth",
            "--level-map", str(tmp_path / "lv.png")]
    assert main(args) == 0
    fields = _fields(capsys.readouterr().out)
    params = APRParameters(rel_error=0.15, lambda_=2.0, Ip_th=5.0, sigma_th=1.5, grad_th=0.5)
    apr = APR.from_image(vol, params=params)
    _check_numbers(fields, apr, vol, mode="smooth")
    assert APR.load(out).parameters == params
    assert read_image(tmp_path / "lv.png").shape == (18, 20, 3)  # middle z-slice


def test_convert_auto_thresholds_and_channel_axis(tmp_path, capsys):
    img = np.stack([_blob_image((30, 34), 1), _blob_image((30, 34), 2)], axis=0).astype(np.float32)
    path = tmp_path / "two.npy"
    np.save(path, img)
    out = tmp_path / "two.apr"
    assert main(["convert", str(path), "-o", str(out), "--channel-axis", "0", "--auto-thresholds"]) == 0
    fields = _fields(capsys.readouterr().out)
    apr = APR.from_image(img, params=APRParameters(auto_parameters=True), channel_axis=0)
    assert int(fields["particles"]) == apr.n_particles
    saved = APR.load(out)
    assert saved.n_channels == 2 and saved.parameters.auto_parameters


def test_info(tmp_path, npy_image, capsys):
    out = tmp_path / "i.apr"
    assert main(["convert", str(npy_image), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    fields = _fields(text)
    apr = APR.load(out)
    assert int(fields["particles"]) == apr.n_particles
    assert float(fields["computational ratio"]) == pytest.approx(apr.computational_ratio, abs=1e-4)
    assert fields["shape"] == str(apr.shape)
    assert "rel_error: 0.1" in text
    rows = {}
    for line in text.split("particles per level:")[1].splitlines()[2:]:
        level, side, count, _ = line.split()
        rows[int(level)] = (int(side), int(count))
    expected = np.bincount(apr.levels, minlength=apr.level_max + 1)
    assert rows == {lv: (1 << (apr.level_max - lv), int(n)) for lv, n in enumerate(expected) if n}


def test_sweep(npy_image, capsys):
    es = [0.05, 0.2, 0.8]
    assert main(["sweep", str(npy_image), "--rel-error", *map(str, es)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-")) + 1
    rows = [line.split() for line in lines[start:]]
    assert len(rows) == len(es)
    image = np.load(npy_image)
    for e, row in zip(es, rows):
        apr = APR.from_image(image, e)
        mean_err, max_err = apr.reconstruction_error(image)
        assert float(row[0]) == e
        assert int(row[1]) == apr.n_particles
        assert float(row[2]) == pytest.approx(apr.computational_ratio, abs=1e-4)
        assert float(row[3]) == pytest.approx(mean_err, rel=1e-5)
        assert float(row[4]) == pytest.approx(max_err, rel=1e-5)
    counts = [int(r[1]) for r in rows]
    assert counts[0] >= counts[-1]


@pytest.mark.parametrize("make_args, message", [
    (lambda d, img: ["convert", str(d / "missing.tif"), "-o", str(d / "o.apr")], "no such image"),
    (lambda d, img: ["convert", str(img), "-o", str(d / "nodir" / "o.apr")], "does not exist"),
    (lambda d, img: ["convert", str(img), "-o", str(d / "o.apr"), "--level-map", str(d / "l.bmp")], ".png"),
    (lambda d, img: ["convert", str(img), "-o", str(d / "o.apr"), "--channel-axis", "5"], "out of range"),
    (lambda d, img: ["convert", str(img), "-o", str(d / "o.apr"), "--rel-error", "-1"], "rel_error"),
    (lambda d, img: ["info", str(d / "missing.apr")], "no such"),
    (lambda d, img: ["info", str(img)], "not a readable"),
    (lambda d, img: ["sweep", str(img), "--rel-error", "0.1", "0"], "positive"),
    (lambda d, img: ["sweep", str(d / "x.gif"), "--rel-error", "0.1"], "unsupported extension"),
])
def test_errors_exit_2_with_message(tmp_path, npy_image, capsys, make_args, message):
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    code = main(make_args(tmp_path, npy_image))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "error" in err


def test_unknown_extension_exit_2(tmp_path, capsys):
    path = tmp_path / "img.bmpx"
    path.write_bytes(b"abc")
    assert main(["convert", str(path), "-o", str(tmp_path / "o.apr")]) == 2
    assert "unsupported extension" in capsys.readouterr().err
    assert not (tmp_path / "o.apr").exists()


def test_level_map_rgb_and_to_uint8():
    from napari_aprnet.render import to_uint8

    levels = np.array([[2, 3, 4], [5, 6, 1]], dtype=np.uint8)
    rgb = level_map_rgb(levels, 2, 6)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    colours = {tuple(rgb.reshape(-1, 3)[i]) for i in range(5)}
    assert len(colours) == 5  # one distinct colour per level
    assert tuple(rgb[1, 2]) == (0, 0, 0)  # outside the level range
    np.testing.assert_array_equal(to_uint8(np.array([1.0, 3.0, 5.0])), [0, 128, 255])
    np.testing.assert_array_equal(to_uint8(np.array([2.0, 2.0])), [0, 0])
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 20.0]), 0, 10), [0, 255])
    with pytest.raises(TypeError):
        level_map_rgb(np.zeros((2, 2)), 0, 1)
