"""The only code that talks to the C library (cffi API mode).

One module per section of ``native/aprnet.h``: :mod:`.common` (the library,
errors, pointers, threads), :mod:`.formation`, :mod:`.reconstruct`,
:mod:`.labels` and :mod:`.nn`. Every wrapper checks shapes, dtypes and bounds before its call and
turns C status codes into Python exceptions; this package re-exports them all,
so callers write ``from napari_aprnet import _native`` and ``_native.name``.
"""
from napari_aprnet._native.common import (
    CancelledError,
    NativeError,
    cancel_ptr,
    check,
    ffi,
    lib,
    max_threads,
    ptr,
    set_num_threads,
    shape3,
    version,
)
from napari_aprnet._native.formation import (
    formation_grad_ds,
    formation_grad_sigma,
    formation_histogram,
    formation_levels,
    formation_sample,
    formation_scale,
    formation_spline_xy,
    formation_spline_z,
    pulling_scheme,
)
from napari_aprnet._native.labels import labels_majority, labels_paint
from napari_aprnet._native.nn import (
    NNPlan,
    nn_plan_build,
    nn_pool_backward,
    nn_pool_forward,
    nn_scatter_add,
    nn_tree_mean,
    nn_tree_spread,
)
from napari_aprnet._native.reconstruct import (
    CellTable,
    cell_table,
    particle_table,
    reconstruct,
    region_bounds,
    tree_table,
    validate_partition,
)

__all__ = [
    "CancelledError", "NativeError", "cancel_ptr", "check", "ffi", "lib", "max_threads", "ptr", "set_num_threads",
    "shape3", "version", "formation_grad_sigma", "formation_histogram", "formation_levels", "formation_sample",
    "formation_grad_ds", "formation_scale", "formation_spline_xy", "formation_spline_z",
    "pulling_scheme", "NNPlan", "nn_plan_build", "nn_pool_backward", "nn_pool_forward", "nn_scatter_add",
    "nn_tree_mean", "nn_tree_spread", "CellTable", "cell_table", "particle_table", "reconstruct", "region_bounds",
    "tree_table", "validate_partition", "labels_majority", "labels_paint",
]
