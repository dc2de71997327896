"""Functional APR layers: convolution and max pooling (autograd Functions), upsampling and concatenation.

Convolution (thesis eq. 3.3, cross-correlation orientation as ``torch.nn.functional.conv2d``)::

    out[p, d] = bias[d] + sum_{c, o} I[nb(p, o), c] * weight[lambda(p), d, c, o + k // 2]

where ``nb(p, o)`` is the cell at offset ``o`` from particle ``p`` on ``p``'s
own level and ``I`` is the isotropic neighbourhood value there: the particle at
that cell, the mean of its children (recursively; interior tree node) where
the region is finer, the covering coarser particle where it is coarser, and 0
outside the image. A tree node on the image border averages only its children
inside the image. ``lambda(p) = min(level_max - level(p), n_level_kernels - 1)``
(the structure's finest level uses kernel 0).

The thesis writes eq. 3.3 as a true convolution (``omega_k`` multiplies
``I_{i-k}``); our ``weight`` is that kernel flipped, so a one-kernel APRConv on
an all-pixel APR equals ``F.conv2d(..., padding=k // 2)`` with the same weight.

Numerics: the rulebook (for each particle and offset, the index of the value
in ``[particles | tree nodes | zero row]``) comes from C level maps built once
per batch of structures (see ``_plans.py``); for CPU stencils of 25 offsets or
more (5x5, 11x11, 3x3x3) the stencil values are gathered straight from the
maps and no rulebook is stored. Tree values are filled bottom-up (C on CPU, torch ops elsewhere), the
neighbourhood values are gathered into column blocks (im2col, by chunks) and
multiplied with the level's kernel by one matrix product per block. The
backward pass (eqs. 3.4-3.5) recomputes the columns for the weight gradient,
scatters the column gradients back to particles and tree nodes (a
deterministic C kernel on CPU, ``index_add_`` elsewhere) and splits every tree
node's gradient evenly among its children, coarse to fine - the exact adjoint
of the averaging. Only the value table (input features and tree node values)
and the weights are kept for backward. The C kernels give identical results
for any number of OpenMP threads; only torch's matrix products may differ in
the last bits. Max pooling runs in C on CPU (first maximum in child order, as
``torch.max``). The device-specific steps come from the per-device op table
of :mod:`napari_aprnet.nn._backend`; this module holds only the autograd Functions.

Upsampling (the structural inverse of max pooling), the learned transposed
convolution and channel concatenation (U-Net skip connections) are plain index
and torch ops: their gradients are torch's own (``index_select`` backward is
``index_add``).
"""
from __future__ import annotations

import threading

import torch
from torch.autograd.function import once_differentiable

from napari_aprnet.nn._backend import ops_for
from napari_aprnet.nn._plans import ConvPlan, PoolPlan, conv_plan, conv_transpose_rows, pool_plan, upsample_rows
from napari_aprnet.nn.batch import APRBatch, same_structures

__all__ = ["apr_conv", "apr_max_pool", "apr_upsample", "apr_conv_transpose", "apr_concat", "values_table"]

_CHUNK_ELEMENTS = 1 << 20  # entries of one im2col block (4 MiB in float32: gathered, then read by the
# product while still in cache; 8 MiB blocks made 3D U-Net steps 7-15 % slower on a 32 MiB-L3 EPYC)
_workspace = threading.local()  # reused im2col blocks: fresh large allocations cost page faults


def values_table(x: torch.Tensor, plan: ConvPlan) -> torch.Tensor:
    """``[particles | tree nodes | zero row]``, tree nodes = mean of their children (no autograd).

    Tree levels are filled finest first, so every node averages values that are
    already final.
    """
    v = x.new_empty((plan.n_values, x.shape[1]))
    v[: plan.n_particles] = x
    v[plan.n_values - 1] = 0
    if plan.tree is not None:
        ops_for(v).tree_mean(v, plan)
    return v


def _chunks(n: int, width: int):
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _buffer(like: torch.Tensor, n_rows: int, width: int) -> torch.Tensor:
    """A flat buffer for one chunk of ``width``-wide rows, reused across calls (per thread, device, dtype)."""
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    n = min(n_rows, step) * width
    bufs = getattr(_workspace, "bufs", None)
    if bufs is None:
        bufs = _workspace.bufs = {}
    key = (like.device, like.dtype)
    buf = bufs.get(key)
    if buf is None or buf.numel() < n:
        buf = bufs[key] = like.new_empty(max(n, _CHUNK_ELEMENTS))
    return buf[:n]


def _flat_weight(weight: torch.Tensor) -> torch.Tensor:
    """(L, out, in, *k) -> (L, out, K * in) with offsets outer, channels inner."""
    nd = weight.dim() - 3
    perm = (0, 1) + tuple(range(3, 3 + nd)) + (2,)
    return weight.permute(*perm).reshape(weight.shape[0], weight.shape[1], -1)


class _APRConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: ConvPlan):
        n, c_in = x.shape
        c_out = weight.shape[1]
        wf = _flat_weight(weight)
        out = x.new_empty((n, c_out))
        v = values_table(x, plan) if plan.tree is not None else x
        width = wf.shape[2]
        ops = ops_for(v)
        for g, grp in enumerate(plan.groups):
            if grp is None:
                continue
            rows = grp[0]
            n_g = n if rows is None else rows.shape[0]
            wg = wf[g].t()
            if plan.kernel_size == 1:  # 1x1: no reconstruction
                src = x if rows is None else x.index_select(0, rows)
                res = src @ wg
            else:
                res = out if rows is None else x.new_empty((n_g, c_out))
                buf = _buffer(x, n_g, width)
                for a, b in _chunks(n_g, width):
                    cols = buf[: (b - a) * width]
                    ops.stencil_values(plan, g, v, a, b, cols)
                    torch.mm(cols.view(b - a, width), wg, out=res[a:b])
            if rows is None:
                if res is not out:
                    out.copy_(res)
            else:
                out.index_copy_(0, rows, res)
        if bias is not None:
            out += bias
        ctx.plan = plan
        ctx.has_bias = bias is not None
        ctx.save_for_backward(v, weight)  # the value table (x, then the tree nodes) is reused by backward
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        v, weight = ctx.saved_tensors
        plan: ConvPlan = ctx.plan
        x = v[: plan.n_particles] if plan.tree is not None else v
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        n, c_in = x.shape
        wf = _flat_weight(weight)
        gwf = torch.zeros_like(wf) if need_w else None
        gx = None
        gv = None
        if need_x:
            gv = x.new_zeros((plan.n_values, c_in)) if plan.tree is not None else x.new_zeros((n, c_in))
        width = wf.shape[2]
        ops = ops_for(v)
        for g, grp in enumerate(plan.groups):
            if grp is None:
                continue
            rows = grp[0]
            n_g = n if rows is None else rows.shape[0]
            go = grad_out if rows is None else grad_out.index_select(0, rows)
            if plan.kernel_size == 1:
                if need_w:
                    src = x if rows is None else x.index_select(0, rows)
                    gwf[g] = go.t() @ src
                if need_x:
                    gs = go @ wf[g]
                    if rows is None:
                        gv += gs
                    else:
                        gv.index_add_(0, rows, gs)  # rows are unique
                continue
            buf = _buffer(x, n_g, width)
            for a, b in _chunks(n_g, width):
                chunk = buf[: (b - a) * width]
                if need_w:
                    ops.stencil_values(plan, g, v, a, b, chunk)
                    gwf[g].addmm_(go[a:b].t(), chunk.view(b - a, width))
                if need_x:
                    torch.mm(go[a:b], wf[g], out=chunk.view(b - a, width))
                    ops.scatter_add(gv, plan.rulebook(g)[a:b].reshape(-1), chunk.view(-1, c_in))
        if need_x:
            if plan.tree is not None:
                ops.tree_spread(gv, plan)
            gx = gv[:n]
        gw = None
        if need_w:
            nd = weight.dim() - 3
            ks = weight.shape[3:]
            gw = gwf.view(weight.shape[0], weight.shape[1], *ks, c_in)
            gw = gw.permute(0, 1, 2 + nd, *range(2, 2 + nd)).contiguous()
        gb = grad_out.sum(0) if (need_b and ctx.has_bias) else None
        return gx, gw, gb, None


def _check_conv_args(batch: APRBatch, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    if not isinstance(batch, APRBatch):
        raise TypeError(f"APR layers take an APRBatch, got {type(batch).__name__}")
    nd = batch.ndim
    if weight.dim() != 3 + nd:
        raise ValueError(f"weight for {nd}D APRs must have shape (n_level_kernels, out, in{', k' * nd}), "
                         f"got {tuple(weight.shape)}; the layer's ndim ({weight.dim() - 3}) does not match "
                         f"the data ({nd}D)")
    ks = weight.shape[3:]
    if len(set(ks)) != 1 or ks[0] % 2 == 0:
        raise ValueError(f"kernel must be cubic with an odd size, got {tuple(ks)}")
    if weight.shape[2] != batch.n_channels:
        raise ValueError(f"the convolution expects {weight.shape[2]} input channels, the batch has "
                         f"{batch.n_channels}")
    if batch.features.dtype != weight.dtype:
        raise TypeError(f"features are {batch.features.dtype} but the weights are {weight.dtype}; "
                        "convert one (e.g. module.to(torch.float64) or batch.to(torch.float32))")
    if batch.features.device != weight.device:
        raise ValueError(f"features are on {batch.features.device} but the weights on {weight.device}")
    if bias is not None and bias.shape != (weight.shape[1],):
        raise ValueError(f"bias must have shape ({weight.shape[1]},), got {tuple(bias.shape)}")
    return int(ks[0])


def apr_conv(batch: APRBatch, weight: torch.Tensor, bias: torch.Tensor | None = None) -> APRBatch:
    """APR convolution (thesis eq. 3.3) of a batch.

    Parameters
    ----------
    batch : APRBatch
        Input, C_in channels.
    weight : Tensor, shape (n_level_kernels, C_out, C_in, k, k[, k])
        Kernel ``j`` is used for particles ``j`` levels below their structure's
        ``level_max``; coarser levels share the last kernel.
    bias : Tensor, shape (C_out,), optional

    Returns
    -------
    APRBatch
        Same structures, C_out channels.
    """
    k = _check_conv_args(batch, weight, bias)
    plan = conv_plan(batch, k, weight.shape[0])
    out = _APRConvFunction.apply(batch.features, weight, bias, plan)
    return batch.with_features(out)


class _APRMaxPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan: PoolPlan):
        ctx.plan, ctx.n = plan, x.shape[0]
        out, ctx.src = ops_for(x).pool_forward(x, plan, True)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return ops_for(grad_out).pool_backward(grad_out, ctx.plan, ctx.src, ctx.n), None


def apr_max_pool(batch: APRBatch) -> APRBatch:
    """APR max pooling (thesis algorithms 1-2).

    Particles at each structure's ``level_max`` are pooled 2x per axis into
    their parent cell (maximum over the children inside the image); coarser
    particles pass through. The output structures have ``shape = ceil(shape /
    2)`` and ``level_max - 1``. Under ``torch.no_grad()`` (or when the input
    needs no gradient) no argmax map is stored.
    """
    if not isinstance(batch, APRBatch):
        raise TypeError(f"APR layers take an APRBatch, got {type(batch).__name__}")
    plan = pool_plan(batch)
    x = batch.features
    if torch.is_grad_enabled() and x.requires_grad:
        out = _APRMaxPoolFunction.apply(x, plan)
    else:
        out = ops_for(x).pool_forward(x, plan, False)[0]
    return APRBatch(out, plan.out_structures, _cache=plan.out_cache)


def _check_pair(a: APRBatch, b: APRBatch, what: str) -> None:
    for x in (a, b):
        if not isinstance(x, APRBatch):
            raise TypeError(f"{what} takes two APRBatch objects, got {type(x).__name__}")
    if a.device != b.device:
        raise ValueError(f"{what}: the batches are on different devices ({a.device} and {b.device})")
    if a.batch_size != b.batch_size:
        raise ValueError(f"{what}: the batches hold {a.batch_size} and {b.batch_size} APRs")


def _check_pooled_pair(coarse: APRBatch, fine: APRBatch, what: str) -> None:
    _check_pair(coarse, fine, what)
    if not same_structures(pool_plan(fine).out_structures, coarse.structures):
        raise ValueError(f"{what}: the coarse batch is not on the structures of the max pooling of the fine "
                         "batch; pass the batch that was pooled (the skip connection's input) as `fine`")


def apr_upsample(coarse: APRBatch, fine: APRBatch) -> APRBatch:
    """Carry features of a max-pooled batch back to the structures before pooling.

    The inverse of :func:`apr_max_pool` for the structure: every particle of
    ``fine`` that was pooled takes the value of its parent (the pooled particle
    it went into); every particle that passed through pooling takes its own
    value. On an all-pixel APR this is nearest-neighbour upsampling by 2,
    cropped to the image. The gradient sums over the children of each parent.

    Parameters
    ----------
    coarse : APRBatch
        Features on the structures of ``apr_max_pool(fine)`` (any channels).
    fine : APRBatch
        The batch that was pooled (only its structures and plan cache are used).

    Returns
    -------
    APRBatch
        ``fine``'s structures (and plan cache) with ``coarse``'s channels.
    """
    _check_pooled_pair(coarse, fine, "apr_upsample")
    return fine.with_features(coarse.features.index_select(0, upsample_rows(fine)))


def apr_conv_transpose(coarse: APRBatch, fine: APRBatch, weight: torch.Tensor,
                       bias: torch.Tensor | None = None) -> APRBatch:
    """Learned 2x upsampling: the transposed convolution (kernel 2, stride 2) of max pooling's structure.

    A pooled particle of ``fine`` at child offset ``o`` of its parent ``p``
    gets ``sum_c coarse[p, c] * weight[c, :, o] + bias``; a particle that
    passed through pooling (its cell is not split by it) gets its own value
    times the mean of the ``2**d`` kernels, the mean of what its subcells
    would get from a constant input. On an all-pixel APR this is
    ``torch.nn.functional.conv_transpose2d(x, weight, bias, stride=2)`` cropped
    to the image.

    Parameters
    ----------
    coarse, fine : APRBatch
        As for :func:`apr_upsample`.
    weight : Tensor, shape (C_in, C_out, 2, 2[, 2])
        ``torch.nn.ConvTranspose2d/3d`` layout.
    bias : Tensor, shape (C_out,), optional
    """
    _check_pooled_pair(coarse, fine, "apr_conv_transpose")
    nd = fine.ndim
    if weight.dim() != 2 + nd or weight.shape[2:] != (2,) * nd or weight.shape[0] != coarse.n_channels:
        raise ValueError(f"weight must have shape ({coarse.n_channels}, C_out{', 2' * nd}) for {nd}D APRs with "
                         f"{coarse.n_channels} channels, got {tuple(weight.shape)}")
    if weight.dtype != coarse.dtype or weight.device != coarse.device:
        raise TypeError(f"features are {coarse.dtype} on {coarse.device} but the weights {weight.dtype} on "
                        f"{weight.device}; convert one (e.g. module.to(torch.float64))")
    c_in, c_out = weight.shape[:2]
    w = weight.reshape(c_in, c_out, 2 ** nd)
    w = torch.cat([w, w.mean(2, keepdim=True)], 2).permute(0, 2, 1).reshape(c_in, -1)  # [offset | mean] x C_out
    out = (coarse.features @ w).view(-1, c_out).index_select(0, conv_transpose_rows(fine))
    return fine.with_features(out if bias is None else out + bias)


def apr_concat(a: APRBatch, b: APRBatch) -> APRBatch:
    """Channel concatenation ``[a | b]`` of two batches on the same structures (U-Net skip connections).

    The structures must be the same objects or hold the same particle cells;
    the result keeps ``a``'s structures and plan cache.
    """
    _check_pair(a, b, "apr_concat")
    if not same_structures(a.structures, b.structures):
        raise ValueError("apr_concat: the batches are on different APR structures; concatenate features of the "
                         "same APRs (e.g. an encoder output and the upsampled decoder features)")
    if a.dtype != b.dtype:
        raise TypeError(f"apr_concat: the features are {a.dtype} and {b.dtype}; convert one first")
    return a.with_features(torch.cat([a.features, b.features], dim=1))
