"""Image preparation and augmentation (thesis 4.2.1 and 4.2.4), numpy in, numpy out.

Images are ``(H, W)`` grey or ``(H, W, C)`` colour float32 arrays in [0, 1].
Geometry uses torch's ``affine_grid``/``grid_sample`` (bilinear); no
torchvision. Functions never modify their inputs.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["to_float01", "match_channels", "resize_bilinear", "augment", "AUGMENTATIONS"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_float01(image: np.ndarray) -> np.ndarray:
    """Convert an image to float32: integers are divided by their dtype's maximum, floats kept.

    Raises
    ------
    ValueError
        For boolean, complex or object arrays, or non-finite values.
    """
    image = np.asarray(image)
    if image.dtype == bool or image.dtype.kind not in "uif":
        raise ValueError(f"images must have an integer or float dtype, got {image.dtype}")
    if image.dtype.kind in "ui":
        return (image.astype(np.float64) / np.iinfo(image.dtype).max).astype(np.float32)
    out = image.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError("the image contains NaN or infinite values")
    return out


def match_channels(image: np.ndarray, channels: int, *, convert: bool = True) -> np.ndarray:
    """Return ``image`` as ``(H, W)`` for ``channels == 1`` or ``(H, W, 3)`` for ``channels == 3``.

    An alpha channel (RGBA, grey+alpha) is dropped. With ``convert`` true,
    colour images become grey (luma weights) and grey images are replicated
    to RGB; with ``convert`` false a channel mismatch is a ``ValueError``.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (2, 4):
        image = image[..., :-1]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"expected a 2D grey image (H, W) or a colour image (H, W, 3|4), got shape {image.shape}")
    have = 1 if image.ndim == 2 else 3
    if have == channels:
        return image
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not convert:
        what = "grey" if have == 1 else "colour (RGB)"
        want = "grey" if channels == 1 else "colour (RGB)"
        raise ValueError(f"this model takes {want} images but got a {what} image of shape {image.shape}")
    if channels == 1:
        return (image.astype(np.float32) @ _LUMA).astype(np.float32)
    return np.repeat(image[..., None], 3, axis=-1)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]


def _from_tensor(t: torch.Tensor, ndim: int) -> np.ndarray:
    t = t[0]
    return (t[0] if ndim == 2 else t.permute(1, 2, 0)).contiguous().numpy()


def resize_bilinear(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` (side or (H, W)) by bilinear interpolation.

    Downsampling is anti-aliased (like PIL's bilinear filter, which the
    thesis' torchvision resize used); same-size input is returned unchanged.
    """
    hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    image = np.asarray(image, dtype=np.float32)
    if image.shape[:2] == hw:
        return image
    if min(image.shape[:2]) < 1 or min(hw) < 1:
        raise ValueError(f"cannot resize an image of shape {image.shape} to {hw}")
    antialias = hw[0] < image.shape[0] or hw[1] < image.shape[1]
    out = F.interpolate(_to_tensor(image), size=hw, mode="bilinear", align_corners=False, antialias=antialias)
    return _from_tensor(out, image.ndim)


def _affine(image: np.ndarray, angle_deg: float = 0.0, scale: float = 1.0,
            shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Rotate by ``angle_deg`` about the centre, scale, shift (dy, dx) by fractions of the side.

    Pixels from outside the image are 0 (torchvision's default fill).
    """
    a = math.radians(angle_deg)
    c, s = math.cos(a) / scale, math.sin(a) / scale
    # affine_grid maps output coords (x, y) in [-1, 1] to input coords.
    theta = torch.tensor([[[c, -s, -2 * shift[1]], [s, c, -2 * shift[0]]]], dtype=torch.float32)
    x = _to_tensor(image)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _from_tensor(out, image.ndim)


def _jitter(image: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    grey = image if image.ndim == 2 else image @ _LUMA
    mean = float(grey.mean())
    return np.clip((image * brightness - mean * brightness) * contrast + mean * brightness, 0, 1).astype(np.float32)


AUGMENTATIONS = ("rotate", "jitter", "translate_scale")


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The thesis' training augmentation (4.2.4), applied to a resized image.

    One of: rotation by up to 30 degrees; colour jitter (brightness and
    contrast scaled by factors in [0.8, 1.2]); translation by up to 5 % and
    scaling by up to 10 %. Then a horizontal flip with probability 0.5.
    """
    image = np.asarray(image, dtype=np.float32)
    choice = AUGMENTATIONS[int(rng.integers(len(AUGMENTATIONS)))]
    if choice == "rotate":
        image = _affine(image, angle_deg=float(rng.uniform(-30, 30)))
    elif choice == "jitter":
        image = _jitter(image, float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.8, 1.2)))
    else:
        image = _affine(image, scale=float(rng.uniform(0.9, 1.1)),
                        shift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))))
    if rng.random() < 0.5:
        image = np.ascontiguousarray(image[:, ::-1])
    return image
