"""``aprnet convert``, ``aprnet info`` and ``aprnet sweep``: APR conversion from the command line.

Examples::

    aprnet convert cells.tif --rel-error 0.1 -o cells.apr --level-map levels.png
    aprnet info cells.apr
    aprnet sweep cells.tif --rel-error 0.05 0.1 0.2 0.4
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from napari_aprnet.apr import APR
from napari_aprnet.io import read_image, write_image
from napari_aprnet.params import APRParameters
from napari_aprnet.render import level_map_rgb, middle_slice, to_uint8

__all__ = ["register"]

_COLOR_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _progress(message: str) -> None:
    """One progress line on stderr (stdout stays clean for results)."""
    print(f"aprnet: {message}", file=sys.stderr, flush=True)


def _add_param_args(p: argparse.ArgumentParser, rel_error_many: bool = False) -> None:
    if rel_error_many:
        p.add_argument("--rel-error", type=float, nargs="+", required=True, metavar="E",
                       help="relative error thresholds E to try, e.g. 0.05 0.1 0.2 0.4")
    else:
        p.add_argument("--rel-error", type=float, default=None, metavar="E",
                       help="relative error threshold E (default 0.1; smaller = more particles)")
    p.add_argument("--lambda", dest="lambda_", type=float, default=None,
                   help="smoothing of the gradient B-spline (default 3.0; 0 = none)")
    p.add_argument("--ip-th", dest="Ip_th", type=float, default=None,
                   help="intensity threshold: no refinement where the smoothed image is <= this (default 0)")
    p.add_argument("--sigma-th", dest="sigma_th", type=float, default=None,
                   help="lower bound of the local intensity scale (default 0)")
    p.add_argument("--grad-th", dest="grad_th", type=float, default=None,
                   help="gradient magnitudes below this are ignored (default 0)")
    p.add_argument("--auto-thresholds", action="store_true",
                   help="choose --sigma-th and --grad-th from the image (Li thresholds)")
    p.add_argument("--channel-axis", type=int, default=None, metavar="N",
                   help="axis holding colour channels (default: last axis of RGB(A) PNG/JPEG images, else none)")


def _params_from_args(args, rel_error: float | None = None):

    overrides = {name: getattr(args, name) for name in ("lambda_", "Ip_th", "sigma_th", "grad_th")
                 if getattr(args, name) is not None}
    if rel_error is not None:
        overrides["rel_error"] = rel_error
    if args.auto_thresholds:
        overrides["auto_parameters"] = True
    return APRParameters(**overrides)


def _load_image(path: str, channel_axis: int | None):
    """Read the image; return it with channels moved last, and the channel axis to use (-1 or None)."""

    image = read_image(path)
    if channel_axis is None and os.path.splitext(path)[1].lower() in _COLOR_EXTENSIONS \
            and image.ndim == 3 and image.shape[-1] in (3, 4):
        channel_axis = -1
    if channel_axis is not None:
        if not -image.ndim <= channel_axis < image.ndim:
            raise ValueError(f"--channel-axis {channel_axis} is out of range for an image with "
                             f"{image.ndim} axes (shape {image.shape})")
        image = np.moveaxis(image, channel_axis, -1)
        channel_axis = -1
    spatial = image.ndim - (channel_axis is not None)
    if spatial not in (2, 3):
        hint = " (use --channel-axis for a colour axis)" if channel_axis is None and image.ndim == 4 else ""
        raise ValueError(f"{path}: expected a 2D or 3D image, got shape {image.shape}{hint}")
    return image, channel_axis


def _check_output_dir(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output directory {directory} does not exist (for {path})")


def _describe(image) -> str:
    return f"shape {tuple(image.shape)}, {image.dtype}"


# ----- convert -----------------------------------------------------------------

def _cmd_convert(args) -> int:
    outputs = [args.output] + [p for p in (args.level_map, args.reconstruction) if p]
    for path in outputs:
        _check_output_dir(path)
    for path in (args.level_map, args.reconstruction):
        if path and os.path.splitext(path)[1].lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            raise ValueError(f"{path}: images are written as .png (or .jpg/.tif); change the extension")
    if args.max_memory is not None:
        return _convert_blockwise(args)
    image, channel_axis = _load_image(args.image, args.channel_axis)
    params = _params_from_args(args, args.rel_error)
    _progress(f"converting {args.image} ({_describe(image)}) with E={params.rel_error:g} ...")
    t0 = time.perf_counter()
    apr = APR.from_image(image, params=params, channel_axis=channel_axis)
    t_form = time.perf_counter() - t0
    recon = apr.reconstruct(mode=args.mode)
    if apr.n_channels == 1 and recon.ndim == image.ndim + 1:
        recon = recon[..., 0]
    mean_err, max_err = apr.reconstruction_error(image, mode=args.mode)
    apr.save(args.output)
    print(f"image: {args.image} ({_describe(image)})")
    print(f"particles: {apr.n_particles}")
    print(f"computational ratio: {apr.computational_ratio:.4f}")
    print(f"levels: {apr.level_min}..{apr.level_max}")
    print(f"mean abs error ({args.mode}): {mean_err:.6g}")
    print(f"max abs error ({args.mode}): {max_err:.6g}")
    print(f"conversion time: {t_form:.3f} s")
    print(f"saved: {args.output}")
    note = " (middle z-slice)" if apr.ndim == 3 else ""
    if args.level_map:
        levels = middle_slice(apr.reconstruct(mode="level"), apr.ndim)
        write_image(args.level_map, level_map_rgb(levels, apr.level_min, apr.level_max))
        print(f"level map: {args.level_map}{note}")
    if args.reconstruction:
        lo, hi = float(np.min(image)), float(np.max(image))
        write_image(args.reconstruction, to_uint8(middle_slice(recon, apr.ndim), lo, hi))
        print(f"reconstruction: {args.reconstruction}{note}")
    return 0


def _convert_blockwise(args) -> int:
    """``convert --max-memory``: read a .tif page by page or a .npy memory-mapped; no whole-image outputs."""
    from napari_aprnet.apr import APR
    from napari_aprnet.blockwise import TiffPages

    if args.level_map or args.reconstruction or args.channel_axis is not None:
        raise ValueError("--max-memory converts one-channel volumes without reconstructing them: drop "
                         "--level-map, --reconstruction and --channel-axis")
    ext = os.path.splitext(args.image)[1].lower()
    if ext in (".tif", ".tiff"):
        image = TiffPages(args.image)
    elif ext == ".npy":
        image = np.load(args.image, mmap_mode="r")
    else:
        raise ValueError(f"{args.image}: --max-memory reads .tif/.tiff stacks or .npy files, not {ext}")
    params = _params_from_args(args, args.rel_error)
    _progress(f"converting {args.image} ({_describe(image)}) within {args.max_memory} ...")
    t0 = time.perf_counter()
    apr = APR.from_image(image, params=params, max_memory=args.max_memory, workers=args.workers)
    t_form = time.perf_counter() - t0
    apr.save(args.output)
    print(f"image: {args.image} ({_describe(image)})")
    print(f"particles: {apr.n_particles}")
    print(f"computational ratio: {apr.computational_ratio:.4f}")
    print(f"levels: {apr.level_min}..{apr.level_max}")
    print(f"conversion time: {t_form:.3f} s")
    print(f"saved: {args.output}")
    return 0


# ----- info ----------------------------------------------------------------------

def _cmd_info(args) -> int:
    apr = APR.load(args.file)
    print(f"file: {args.file}")
    print(f"shape: {apr.shape}")
    print(f"channels: {apr.n_channels}")
    print(f"particles: {apr.n_particles}")
    print(f"computational ratio: {apr.computational_ratio:.4f}")
    print(f"levels: {apr.level_min}..{apr.level_max}")
    params = apr.parameters
    if params is None:
        print("parameters: (none recorded)")
    else:
        items = params.to_dict() if hasattr(params, "to_dict") else dict(params)
        print("parameters:")
        for key, value in items.items():
            print(f"  {key}: {value}")
    print("particles per level:")
    print(f"  {'level':>5}  {'cell side':>9}  {'particles':>10}  {'share':>7}")
    for level, count in apr.level_counts().items():
        side = 1 << (apr.level_max - level)
        print(f"  {level:>5}  {side:>9}  {count:>10}  {100.0 * count / apr.n_particles:>6.2f}%")
    return 0


# ----- sweep -------------------------------------------------------------------

def _cmd_sweep(args) -> int:
    bad = [e for e in args.rel_error if not (np.isfinite(e) and e > 0)]
    if bad:
        raise ValueError(f"--rel-error values must be positive, got {bad}")
    image, channel_axis = _load_image(args.image, args.channel_axis)
    base = _params_from_args(args, args.rel_error[0])
    print(f"image: {args.image} ({_describe(image)}), reconstruction: {args.mode}")
    header = f"{'E':>8}  {'particles':>10}  {'CR':>10}  {'mean abs err':>12}  {'max abs err':>12}"
    print(header)
    print("-" * len(header))
    n = len(args.rel_error)
    for i, e in enumerate(args.rel_error, 1):
        _progress(f"[{i}/{n}] E={e:g} ...")
        params = _params_from_args(args, e) if i > 1 else base
        apr = APR.from_image(image, params=params, channel_axis=channel_axis)
        mean_err, max_err = apr.reconstruction_error(image, mode=args.mode)
        print(f"{e:>8g}  {apr.n_particles:>10d}  {apr.computational_ratio:>10.4f}  "
              f"{mean_err:>12.6g}  {max_err:>12.6g}", flush=True)
    return 0


def register(subparsers) -> None:
    """Add the ``convert``, ``info`` and ``sweep`` sub-commands to an argparse sub-parser group."""
    p = subparsers.add_parser("convert", help="convert an image to an .apr file",
                              description="Form the APR of an image (tif, png, jpg or npy) and save it.")
    p.add_argument("image", help="input image (.tif, .tiff, .png, .jpg, .jpeg, .npy)")
    p.add_argument("-o", "--output", required=True, help="output .apr file")
    _add_param_args(p)
    p.add_argument("--mode", choices=("constant", "smooth"), default="constant",
                   help="reconstruction used for the error and --reconstruction (default constant)")
    p.add_argument("--level-map", metavar="PNG", help="also write a colour level map (PNG)")
    p.add_argument("--reconstruction", metavar="PNG", help="also write the reconstruction (PNG)")
    p.add_argument("--max-memory", metavar="SIZE", default=None,
                   help="convert block by block along z within SIZE (e.g. 600MiB) when the volume needs more; "
                        "reads .tif page by page and .npy memory-mapped")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="with --max-memory: N processes convert blocks at the same time, sharing SIZE (default 1)")
    p.set_defaults(func=_cmd_convert)

    p = subparsers.add_parser("info", help="describe an .apr file",
                              description="Print shape, particles, CR, levels, parameters and "
                                          "particles per level of an .apr file.")
    p.add_argument("file", help=".apr file")
    p.set_defaults(func=_cmd_info)

    p = subparsers.add_parser("sweep", help="try several E on one image",
                              description="Convert an image at several relative errors E and print "
                                          "particles, CR and reconstruction errors.")
    p.add_argument("image", help="input image (.tif, .tiff, .png, .jpg, .jpeg, .npy)")
    _add_param_args(p, rel_error_many=True)
    p.add_argument("--mode", choices=("constant", "smooth"), default="constant",
                   help="reconstruction used for the errors (default constant)")
    p.set_defaults(func=_cmd_sweep)
