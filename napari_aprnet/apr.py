"""The :class:`APR`: a particle-cell structure with one value (or vector) per particle.

An APR is built from a pixel image with :meth:`APR.from_image` (the formation
pipeline, thesis section 2.3), turned back into pixels with
:meth:`APR.reconstruct` and stored in ``.apr`` files with :meth:`APR.save` /
:meth:`APR.load` (see :mod:`napari_aprnet.io.apr_h5`).

Reconstruction modes
--------------------
``"constant"``
    Every pixel takes the value of the particle whose cell covers it
    (piecewise constant; what the networks see).
``"smooth"``
    Every pixel ``y`` lying in a cell of side ``s`` (its implied resolution
    ``R*(y)``) takes the weighted mean of the particles whose collocation
    points ``x_p`` (cell centres, clipped to the image) are closer than ``s``
    to the pixel centre, with tent weights ``w_p = 1 - |x_p - y| / s``
    (Euclidean distance in pixels). This is exactly the form of eq. 2.14:
    non-negative weights summing to one over ``N(y, R*(y))``. The own
    particle is always within reach; pixel-level particles keep their value
    exactly (all other centres are at distance >= 1). LibAPR's smooth
    reconstruction instead blurs the constant image with separable box means
    whose width follows the level; ours uses the particles themselves and
    never reaches beyond ``R*(y)``.
``"level"``
    The level of the particle covering each pixel (uint8; a "level map").
"""
from __future__ import annotations

import os
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from napari_aprnet import _native
from napari_aprnet.blockwise import form_apr_blockwise, needs_blocks, parse_memory
from napari_aprnet.formation import form_apr
from napari_aprnet.io import APR_FORMATS, apr_h5, libapr
from napari_aprnet.params import APRParameters
from napari_aprnet.structure import APRStructure, validate_structure

__all__ = ["APR", "load_apr", "save_apr", "validate_structure", "normalize_region"]

_MODES = ("constant", "smooth", "level")


def normalize_region(region, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Turn a tuple of slices (or ``(start, stop)`` pairs) into per-axis ``(start, stop)``.

    Missing trailing axes mean the whole axis; negative indices count from the
    end like numpy. Steps other than 1 and empty results are rejected.
    """
    shape = tuple(int(s) for s in shape)
    if region is None:
        return tuple((0, n) for n in shape)
    if not isinstance(region, (slice, tuple, list)):
        raise TypeError(f"region must be a tuple of slices, got {type(region).__name__}")
    items = (region,) if isinstance(region, slice) else tuple(region)
    if len(items) > len(shape):
        raise ValueError(f"region has {len(items)} axes, the image has {len(shape)}")
    out = []
    for axis, n in enumerate(shape):
        item = items[axis] if axis < len(items) else slice(None)
        if not isinstance(item, slice):
            if isinstance(item, Sequence) and len(item) == 2:
                item = slice(int(item[0]), int(item[1]))
            else:
                raise TypeError(f"region axis {axis}: expected a slice or (start, stop), got {item!r}")
        start, stop, step = item.indices(n)
        if step != 1:
            raise ValueError(f"region axis {axis}: only step 1 is supported, got {step}")
        if stop <= start:
            raise ValueError(f"region axis {axis}: {item} selects no pixels of an axis of length {n}")
        out.append((start, stop))
    return tuple(out)


def _as_values(values, n_particles: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim not in (1, 2) or values.shape[0] != n_particles:
        raise ValueError(f"particle values must have shape ({n_particles},) or ({n_particles}, C), "
                         f"got {values.shape}")
    if values.ndim == 2 and values.shape[1] < 1:
        raise ValueError("particle values need at least one channel")
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise TypeError(f"particle values must be numeric, got dtype {values.dtype}")
    return np.ascontiguousarray(values, dtype=np.float32)


class APR:
    """An Adaptive Particle Representation: structure, particle values and parameters.

    Parameters
    ----------
    structure : APRStructure
        Particle cells (a partition of the image grid).
    values : array_like, shape (Np,) or (Np, C)
        One value (or one vector of C channels) per particle; stored as float32.
    parameters : APRParameters, optional
        The parameters the APR was formed with (None for hand-made APRs).
    """

    def __init__(self, structure: APRStructure, values, parameters: APRParameters | None = None):
        if not isinstance(structure, APRStructure):
            raise TypeError(f"structure must be an APRStructure, got {type(structure).__name__}")
        self._structure = structure
        self._values = _as_values(values, structure.n_particles)
        self._parameters = parameters

    # ----- construction ---------------------------------------------------
    @classmethod
    def from_image(cls, image, rel_error: float | None = None, *, params: APRParameters | None = None,
                   channel_axis: int | None = None, cancel: Callable[[], bool] | None = None,
                   max_memory: int | str | None = None, workers: int | Executor = 1,
                   **param_overrides) -> "APR":
        """Form the APR of a 2D or 3D image (LibAPR's pipeline, thesis section 2.3).

        Parameters
        ----------
        image : array_like
            2D ``(y, x)`` or 3D ``(z, y, x)`` image, plus a channel axis if
            ``channel_axis`` is given.
        rel_error : float, optional
            Relative error threshold E of the reconstruction condition (2.15).
            Overrides ``params.rel_error``; 0.1 when neither is given.
        params : APRParameters, optional
            All formation parameters (defaults when None).
        channel_axis : int, optional
            Axis of ``image`` holding channels (e.g. -1 for RGB); the
            particle cells are shared and values get one column per channel.
        cancel : callable returning bool, optional
            Polled during formation; raises ``CancelledError`` when true.
        max_memory : int or str, optional
            Memory budget (e.g. ``"600MiB"``). A one-channel 3D volume whose
            whole-volume conversion needs more is converted block by block
            along z without being read whole (numpy memmap,
            :class:`napari_aprnet.blockwise.TiffPages`, zarr, dask); see
            :mod:`napari_aprnet.blockwise` for the tolerance.
        workers : int or concurrent.futures.Executor
            With ``max_memory``: processes converting blocks at the same time,
            or an executor (e.g. a dask cluster's); see
            :func:`napari_aprnet.blockwise.form_apr_blockwise`.
        **param_overrides
            Any other ``APRParameters`` field, e.g. ``lambda_=2.0``.

        Returns
        -------
        APR
        """
        if params is None:
            params = APRParameters()
        elif not isinstance(params, APRParameters):
            raise TypeError(f"params must be an APRParameters, got {type(params).__name__}")
        if rel_error is not None:
            param_overrides["rel_error"] = float(rel_error)
        if param_overrides:
            params = replace(params, **param_overrides)
        if max_memory is not None and channel_axis is None and len(getattr(image, "shape", ())) == 3 \
                and needs_blocks(image.shape, parse_memory(max_memory)):
            structure, values = form_apr_blockwise(image, params, max_memory=max_memory, workers=workers,
                                                   cancel=cancel)
        else:
            structure, values = form_apr(image, params, channel_axis=channel_axis, cancel=cancel)
        return cls(structure, values, params)

    @classmethod
    def load(cls, path: str | os.PathLike, particles: str | None = None) -> "APR":
        """Read an ``.apr`` file of either format (detected from its content).

        Parameters
        ----------
        path : str or PathLike
            Our format (:func:`napari_aprnet.io.apr_h5.read_apr`) or LibAPR /
            pyapr's (:func:`napari_aprnet.io.libapr.read_libapr`).
        particles : str, optional
            LibAPR files only: the particle dataset to read (default
            ``"particles"``, or the first one).
        """
        if os.path.isfile(path) and libapr.is_libapr_file(path):  # by content: any extension
            contents = libapr.read_libapr(path)
            sets = contents.particles
            name = particles if particles is not None else "particles" if "particles" in sets else next(iter(sets))
            if name not in sets:
                raise apr_h5.APRFileError(f"{os.fspath(path)} has no particle set {name!r} (it has: "
                                          f"{', '.join(sets)})")
            return cls(contents.structure, sets[name], contents.parameters)
        if particles is not None:
            raise ValueError(f"{os.fspath(path)} is a napari-aprnet .apr file; 'particles' applies to LibAPR files")
        structure, values, params = apr_h5.read_apr(path)
        return cls(structure, values, params)

    def save(self, path: str | os.PathLike, format: str = "apr") -> None:
        """Write this APR to an ``.apr`` file atomically.

        Parameters
        ----------
        path : str or PathLike
        format : {"apr", "libapr"}
            Ours (:func:`napari_aprnet.io.apr_h5.save_apr`, any number of
            channels) or LibAPR's, readable by pyapr
            (:func:`napari_aprnet.io.libapr.save_libapr`, one channel).
        """
        if format not in APR_FORMATS:
            raise ValueError(f"unknown .apr format {format!r}; choose one of {', '.join(APR_FORMATS)}")
        if format == "libapr":
            libapr.save_libapr(self, path)
        else:
            apr_h5.save_apr(self, path)

    def copy(self) -> "APR":
        """Copy with its own values array (the immutable structure is shared)."""
        params = self._parameters
        if params is not None:
            params = replace(params) if hasattr(params, "__dataclass_fields__") else dict(params)
        return APR(self._structure, self._values.copy(), params)

    def with_values(self, values) -> "APR":
        """A new APR with the same structure and parameters and other particle values."""
        return APR(self._structure, values, self._parameters)

    # ----- properties -----------------------------------------------------
    @property
    def structure(self) -> APRStructure:
        """The particle cells."""
        return self._structure

    @property
    def values(self) -> np.ndarray:
        """Particle values, float32, ``(Np,)`` or ``(Np, C)``."""
        return self._values

    @property
    def parameters(self) -> Any:
        """Formation parameters (``APRParameters``) or None."""
        return self._parameters

    @property
    def n_particles(self) -> int:
        """Number of particles."""
        return self._structure.n_particles

    @property
    def shape(self) -> tuple[int, ...]:
        """Pixel shape of the image (without channels)."""
        return self._structure.shape

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return self._structure.ndim

    @property
    def n_channels(self) -> int:
        """Channels per particle (1 for a ``(Np,)`` value array)."""
        return 1 if self._values.ndim == 1 else int(self._values.shape[1])

    @property
    def level_min(self) -> int:
        """Coarsest level (as recorded in the structure)."""
        return int(self._structure.level_min)

    @property
    def level_max(self) -> int:
        """Finest (pixel) level."""
        return int(self._structure.level_max)

    @property
    def computational_ratio(self) -> float:
        """Pixels per particle (CR)."""
        return self._structure.computational_ratio

    @property
    def levels(self) -> np.ndarray:
        """Level of each particle (uint8)."""
        return self._structure.levels

    @property
    def coords(self) -> np.ndarray:
        """Coordinates of each particle at its level (int32, ``(Np, ndim)``)."""
        return self._structure.coords

    @property
    def tree(self):
        """Interior tree ``(levels, coords, offsets)``; see :attr:`APRStructure.tree`."""
        return self._structure.tree

    def level_counts(self) -> dict[int, int]:
        """Number of particles per level, for the levels that have particles."""
        counts = np.bincount(self.levels, minlength=self.level_max + 1)
        return {level: int(n) for level, n in enumerate(counts) if n}

    # ----- reconstruction --------------------------------------------------
    def reconstruct(self, values=None, mode: str = "constant", region=None) -> np.ndarray:
        """Pixel image of the particle values (or of any per-particle array).

        Parameters
        ----------
        values : array_like, shape (Np,) or (Np, C), optional
            Values to reconstruct, e.g. a feature map; the APR's own values if None.
        mode : {"constant", "smooth", "level"}
            See the module docstring. ``"level"`` ignores ``values``.
        region : tuple of slices, optional
            Reconstruct only this box (numpy slices, step 1); only the
            particles overlapping it are visited.

        Returns
        -------
        ndarray
            float32 of the region's shape, channels last when the values are
            2D; uint8 levels for ``mode="level"``.
        """
        if mode not in _MODES:
            raise ValueError(f"unknown reconstruction mode {mode!r}; choose one of {', '.join(_MODES)}")
        bounds = normalize_region(region, self.shape)
        if mode == "level":
            return _native.reconstruct(self._structure, None, "level", bounds).astype(np.uint8)
        vals = self._values if values is None else _as_values(values, self.n_particles)
        return _native.reconstruct(self._structure, vals, mode, bounds)

    def reconstruction_error(self, image, mode: str = "constant",
                             channel_axis: int | None = None) -> tuple[float, float]:
        """Mean and max absolute difference between ``image`` and the reconstruction.

        Parameters
        ----------
        image : array_like
            The original image (same pixel shape; channels on ``channel_axis``).
        mode : {"constant", "smooth"}
        channel_axis : int, optional
            Axis of ``image`` holding channels, moved last before comparing.

        Returns
        -------
        (float, float)
            Mean and maximum absolute error, in image intensity units.
        """
        image = np.asarray(image)
        if channel_axis is not None:
            image = np.moveaxis(image, channel_axis, -1)
        recon = self.reconstruct(mode=mode)
        if self.n_channels == 1 and self._values.ndim == 2 and image.ndim == self.ndim:
            recon = recon[..., 0]
        if image.shape != recon.shape:
            raise ValueError(f"image shape {image.shape} does not match the APR's reconstruction "
                             f"shape {recon.shape}")
        diff = np.abs(image.astype(np.float64) - recon.astype(np.float64))
        return float(diff.mean()), float(diff.max())

    # ----- comparison and display -------------------------------------------
    def equals(self, other: "APR") -> bool:
        """True if ``other`` has bit-identical structure, values and equal parameters."""
        if not isinstance(other, APR):
            return False
        a, b = self._structure, other._structure
        same_structure = (a.shape == b.shape and a.level_max == b.level_max and a.level_min == b.level_min
                          and np.array_equal(a.levels, b.levels) and np.array_equal(a.coords, b.coords))
        same_values = (self._values.dtype == other._values.dtype
                       and self._values.shape == other._values.shape
                       and self._values.tobytes() == other._values.tobytes())
        return same_structure and same_values and _params_dict(self._parameters) == _params_dict(other._parameters)

    def __repr__(self) -> str:
        e = _params_dict(self._parameters).get("rel_error") if self._parameters is not None else None
        extra = f", E={e:g}" if isinstance(e, (int, float)) else ""
        ch = f", channels={self.n_channels}" if self._values.ndim == 2 else ""
        return (f"APR(shape={self.shape}, particles={self.n_particles}, "
                f"CR={self.computational_ratio:.2f}, levels={self.level_min}..{self.level_max}{ch}{extra})")


def _params_dict(params) -> dict | None:
    if params is None:
        return None
    if hasattr(params, "to_dict"):
        return dict(params.to_dict())
    return dict(params)


def load_apr(path: str | os.PathLike) -> APR:
    """Read an ``.apr`` file (the same as :meth:`APR.load`)."""
    return APR.load(path)


def save_apr(apr: APR, path: str | os.PathLike) -> None:
    """Write ``apr`` to an ``.apr`` file atomically (the same as :meth:`APR.save`)."""
    apr_h5.save_apr(apr, path)
