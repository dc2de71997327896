"""A batch of APRs with particle features, the value that flows through APR layers."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from napari_aprnet.structure import APRStructure

__all__ = ["APRBatch", "same_structures"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def same_structures(a: Sequence[APRStructure], b: Sequence[APRStructure]) -> bool:
    """True when two lists of structures hold the same particle cells, structure by structure."""
    if len(a) != len(b):
        return False
    return all(x is y or (x.shape == y.shape and x.level_max == y.level_max and np.array_equal(x.levels, y.levels)
                          and np.array_equal(x.coords, y.coords)) for x, y in zip(a, b))


class APRBatch:
    """Particle features of several APRs, concatenated (no padding).

    Parameters
    ----------
    features : Tensor, shape (N_total, C)
        Channels-last features; the particles of ``structures[0]`` come first,
        then those of ``structures[1]``, and so on, each in its structure's
        particle order.
    structures : sequence of APRStructure
        One structure per APR. All must have the same number of dimensions.

    Notes
    -----
    Layers cache index maps ("plans") in a dictionary shared by every batch made
    with :meth:`with_features`, so a network computes them once per batch.
    The per-structure work (rulebooks) is cached on the structures themselves.
    """

    def __init__(self, features: torch.Tensor, structures: Sequence[APRStructure], *, _cache: dict | None = None):
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        structures = list(structures)
        if not structures:
            raise ValueError("an APRBatch needs at least one APR structure (got an empty list)")
        for s in structures:
            if not isinstance(s, APRStructure):
                raise TypeError(f"structures must be APRStructure objects, got {type(s).__name__}")
        ndims = {s.ndim for s in structures}
        if len(ndims) != 1:
            raise ValueError(f"all APRs in a batch must have the same number of dimensions, got {sorted(ndims)}")
        if features.dim() != 2:
            raise ValueError(f"features must have shape (N_total, C), got {tuple(features.shape)}")
        if features.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"features must be a floating point tensor, got {features.dtype}")
        counts = [s.n_particles for s in structures]
        total = int(sum(counts))
        if features.shape[0] != total:
            raise ValueError(f"features have {features.shape[0]} rows but the structures hold {total} "
                             f"particles ({counts}); rows must be the particles of all APRs concatenated")
        self.features = features
        self.structures = structures
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache = {} if _cache is None else _cache

    # ----- construction -------------------------------------------------
    @classmethod
    def from_aprs(cls, aprs: Sequence[Any], values: Sequence[Any] | None = None, add_level_channel: bool = False,
                  dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> "APRBatch":
        """Build a batch from APR objects (anything with ``.structure`` and ``.values``).

        Parameters
        ----------
        aprs : sequence of APR
            The APRs; ``apr.structure`` is an APRStructure and ``apr.values`` the
            particle values, shape (Np,) or (Np, C).
        values : sequence of array-like, optional
            Particle values to use instead of ``apr.values`` (same shapes rules).
        add_level_channel : bool
            Append one channel holding each particle's level divided by its
            structure's ``level_max`` (0 = coarsest level 0, 1 = pixel level; 0
            when ``level_max`` is 0). The thesis (4.2.3) feeds particle levels
            as an extra input channel.
        dtype : torch.dtype
            Floating point dtype of the features.
        device : torch.device or str, optional
            Where to put the features.
        """
        aprs = list(aprs)
        if not aprs:
            raise ValueError("APRBatch.from_aprs needs at least one APR (got an empty list)")
        if values is not None:
            values = list(values)
            if len(values) != len(aprs):
                raise ValueError(f"got {len(values)} value arrays for {len(aprs)} APRs")
        structures, feats = [], []
        for i, apr in enumerate(aprs):
            s = apr.structure if not isinstance(apr, APRStructure) else apr
            v = values[i] if values is not None else getattr(apr, "values", None)
            if v is None:
                raise ValueError(f"APR {i} has no values; pass values=")
            v = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
            if v.dim() == 1:
                v = v[:, None]
            if v.dim() != 2 or v.shape[0] != s.n_particles:
                raise ValueError(f"values of APR {i} must have shape ({s.n_particles},) or "
                                 f"({s.n_particles}, C), got {tuple(v.shape)}")
            v = v.to(dtype)
            if add_level_channel:
                lv = torch.from_numpy(s.levels.astype(np.float64)) / max(s.level_max, 1)
                v = torch.cat([v, lv.to(dtype)[:, None]], dim=1)
            structures.append(s)
            feats.append(v)
        widths = {f.shape[1] for f in feats}
        if len(widths) != 1:
            raise ValueError(f"all APRs must have the same number of channels, got {sorted(widths)}")
        features = torch.cat(feats, dim=0)
        if device is not None:
            features = features.to(device)
        return cls(features, structures)

    # ----- properties -----------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Number of APRs."""
        return len(self.structures)

    @property
    def n_channels(self) -> int:
        """Number of feature channels."""
        return int(self.features.shape[1])

    @property
    def ndim(self) -> int:
        """Spatial dimensions (2 or 3)."""
        return self.structures[0].ndim

    @property
    def device(self) -> torch.device:
        """Device of the features."""
        return self.features.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the features."""
        return self.features.dtype

    def __len__(self) -> int:
        return self.batch_size

    # ----- derived batches --------------------------------------------------
    def with_features(self, features: torch.Tensor) -> "APRBatch":
        """A batch with the same structures (and plan cache) and new features."""
        return APRBatch(features, self.structures, _cache=self._cache)

    def to(self, *args, **kwargs) -> "APRBatch":
        """Move/cast the features like ``Tensor.to`` (structures stay on the host)."""
        return self.with_features(self.features.to(*args, **kwargs))

    def split(self) -> list[torch.Tensor]:
        """Per-APR feature tensors (views)."""
        return [self.features[int(a):int(b)] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def __repr__(self) -> str:
        return (f"APRBatch(batch_size={self.batch_size}, particles={int(self.offsets[-1])}, "
                f"channels={self.n_channels}, dtype={self.dtype}, device={self.device})")
