"""Per-device op table of the APR layers: the device-specific steps of convolution and pooling.

:mod:`napari_aprnet.nn.functional` holds the autograd Functions and asks
:func:`ops_for` which :class:`Ops` to use for a tensor. The C kernels
(:mod:`napari_aprnet._native`) serve float32/float64 tensors on the CPU;
every other device and dtype uses :data:`TORCH_OPS` (plain torch ops, which run
wherever torch does). A CUDA kernel set registers itself with
``register("cuda", Ops(...), dtypes)``.

Every op works in place on preallocated tensors:

- ``tree_mean(v, plan)``: fill the tree-node rows of the value table with the
  mean of their children, finest level first.
- ``tree_spread(gv, plan)``: the adjoint: split every tree node's gradient
  evenly among its children, coarse to fine.
- ``scatter_add(dst, index, src)``: ``dst[index] += src`` row-wise.
- ``stencil_values(plan, g, v, a, b, out)``: the columns (im2col) of rows
  ``a:b`` of kernel group ``g`` into the flat buffer ``out``.
- ``pool_forward(x, plan, with_arg)``: ``(output, argmax record or None)``.
- ``pool_backward(grad_out, plan, arg, n)``: the input gradient (``n`` rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from napari_aprnet import _native
from napari_aprnet.nn._plans import ConvPlan, PoolPlan

__all__ = ["Ops", "TORCH_OPS", "C_OPS", "ops_for", "register"]


@dataclass(frozen=True)
class Ops:
    """The device-specific ops of one backend (see the module docstring)."""

    name: str
    tree_mean: Callable[[torch.Tensor, ConvPlan], None]
    tree_spread: Callable[[torch.Tensor, ConvPlan], None]
    scatter_add: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
    stencil_values: Callable[[ConvPlan, int, torch.Tensor, int, int, torch.Tensor], None]
    pool_forward: Callable[[torch.Tensor, PoolPlan, bool], tuple]
    pool_backward: Callable[[torch.Tensor, PoolPlan, object, int], torch.Tensor]


# ----- torch ops (any device) ---------------------------------------------------

def _counts(plan: ConvPlan, dtype: torch.dtype, device) -> list:
    key = (dtype, str(device))
    c = plan._dtype_cache.get(key)
    if c is None:
        zero = plan.n_values - 1
        c = [(1.0 / (ch != zero).sum(1, keepdim=True).clamp_min(1).to(torch.float64)).to(dtype)
             for _, ch in plan.tree.steps]
        plan._dtype_cache[key] = c
    return c


def _torch_tree_mean(v: torch.Tensor, plan: ConvPlan) -> None:
    n_channels = v.shape[1]
    for (rows, ch), ic in zip(plan.tree.steps, _counts(plan, v.dtype, v.device)):
        s = v.index_select(0, ch.reshape(-1)).view(ch.shape[0], ch.shape[1], n_channels).sum(1)
        v.index_copy_(0, rows, s.mul_(ic))


def _torch_tree_spread(gv: torch.Tensor, plan: ConvPlan) -> None:
    n_channels = gv.shape[1]
    for (rows, ch), ic in reversed(list(zip(plan.tree.steps, _counts(plan, gv.dtype, gv.device)))):
        g = gv.index_select(0, rows).mul_(ic)
        src = g.unsqueeze(1).expand(-1, ch.shape[1], -1).reshape(-1, n_channels)
        gv.index_add_(0, ch.reshape(-1), src)  # children are unique; missing ones hit the zero row


def _torch_scatter_add(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    dst.index_add_(0, index, src)


def _gather(v: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> None:
    """Rows ``v[index]`` into the flat buffer ``out`` (one channel: a 1D gather, faster than 1-wide rows)."""
    if v.shape[1] == 1:
        torch.index_select(v.view(-1), 0, index, out=out)
    else:
        torch.index_select(v, 0, index, out=out.view(-1, v.shape[1]))


def _torch_stencil_values(plan: ConvPlan, g: int, v: torch.Tensor, a: int, b: int, out: torch.Tensor) -> None:
    _gather(v, plan.rulebook(g)[a:b].reshape(-1), out)


def _torch_pool_forward(x: torch.Tensor, plan: PoolPlan, with_arg: bool):
    """Output and, with ``with_arg``, the input particle of each maximum ((n_pool, C), or None if none pool)."""
    n, c = x.shape
    out = x.new_empty((plan.n_out, c))
    out.index_copy_(0, plan.pass_dst, x.index_select(0, plan.pass_src))
    ch = plan.pool_children
    if not ch.shape[0]:
        return out, None
    grp = x.index_select(0, ch.reshape(-1)).view(ch.shape[0], ch.shape[1], c)
    if not with_arg:
        out.index_copy_(0, plan.pool_dst, grp.amax(dim=1))
        return out, None
    vals, arg = grp.max(dim=1)
    out.index_copy_(0, plan.pool_dst, vals)
    return out, ch.gather(1, arg)


def _torch_pool_backward(grad_out: torch.Tensor, plan: PoolPlan, src, n: int) -> torch.Tensor:
    gx = grad_out.new_zeros((n, grad_out.shape[1]))
    gx.index_copy_(0, plan.pass_src, grad_out.index_select(0, plan.pass_dst))
    if src is not None:
        gx.scatter_(0, src, grad_out.index_select(0, plan.pool_dst))  # targets are unique
    return gx


TORCH_OPS = Ops("torch", _torch_tree_mean, _torch_tree_spread, _torch_scatter_add, _torch_stencil_values,
                _torch_pool_forward, _torch_pool_backward)


# ----- C kernels (CPU, float32 / float64) ----------------------------------------

def _c_tree_mean(v: torch.Tensor, plan: ConvPlan) -> None:
    vn, zero = v.numpy(), plan.n_values - 1
    for rows, ch in plan.tree.steps:
        _native.nn_tree_mean(vn, rows.numpy(), ch.numpy(), zero)


def _c_tree_spread(gv: torch.Tensor, plan: ConvPlan) -> None:
    gn, zero = gv.numpy(), plan.n_values - 1
    for rows, ch in reversed(plan.tree.steps):
        _native.nn_tree_spread(gn, rows.numpy(), ch.numpy(), zero)


def _c_scatter_add(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """Deterministic for any number of threads."""
    _native.nn_scatter_add(src.detach().contiguous().numpy(), index.numpy(), dst.detach().numpy())


def _c_stencil_values(plan: ConvPlan, g: int, v: torch.Tensor, a: int, b: int, out: torch.Tensor) -> None:
    """Large stencils gather straight from the level maps; the others use the rulebook."""
    if plan.maps is not None:
        plan.maps.gather(plan.kernel_size, plan.gather_rows[g][a:b].numpy(), v.numpy(), out.numpy())
    else:
        _gather(v, plan.rulebook(g)[a:b].reshape(-1), out)


def _c_pool_forward(x: torch.Tensor, plan: PoolPlan, with_arg: bool):
    """Output and, with ``with_arg``, the argmax rows (n_pool, C) int32 (first maximum in child order)."""
    x = x.detach().contiguous()
    out = x.new_empty((plan.n_out, x.shape[1]))
    arg = torch.empty((plan.pool_dst.shape[0], x.shape[1]), dtype=torch.int32) if with_arg else None
    _native.nn_pool_forward(x.numpy(), plan.pass_src.numpy(), plan.pass_dst.numpy(), plan.pool_dst.numpy(),
                            plan.pool_children.numpy(), out.numpy(), None if arg is None else arg.numpy())
    return out, arg


def _c_pool_backward(grad_out: torch.Tensor, plan: PoolPlan, arg, n: int) -> torch.Tensor:
    gx = grad_out.new_zeros((n, grad_out.shape[1]))
    _native.nn_pool_backward(grad_out.contiguous().numpy(), plan.pass_src.numpy(), plan.pass_dst.numpy(),
                             plan.pool_dst.numpy(), arg.numpy(), gx.numpy())
    return gx


C_OPS = Ops("c", _c_tree_mean, _c_tree_spread, _c_scatter_add, _c_stencil_values, _c_pool_forward,
            _c_pool_backward)


# ----- the table ------------------------------------------------------------------

_TABLE: dict[str, tuple[Ops, tuple[torch.dtype, ...]]] = {}


def register(device_type: str, ops: Ops, dtypes: tuple[torch.dtype, ...]) -> None:
    """Use ``ops`` for tensors on ``device_type`` (``"cpu"``, ``"cuda"``, ...) with one of ``dtypes``."""
    _TABLE[device_type] = (ops, tuple(dtypes))


def ops_for(t: torch.Tensor) -> Ops:
    """The ops registered for ``t``'s device and dtype; :data:`TORCH_OPS` where none are."""
    entry = _TABLE.get(t.device.type)
    if entry is not None and t.dtype in entry[1]:
        return entry[0]
    return TORCH_OPS


register("cpu", C_OPS, (torch.float32, torch.float64))
