"""The Triton backend of the vocabulary-parallel steps: launchers with the signatures of the
torch functions in ``triton_focal/_row_math.py`` (``shard_softmax_stats``,
``shard_smoothing_sums``, ``shard_focal_grad``), which they replace one for one."""

import torch

from ..kernels.vocab_shard import _shard_grad_kernel, _shard_smoothing_kernel, _shard_stats_kernel
from .launch import acc_dtype, next_power_of_2, on_input_device
from .scalars import split_float

# One program per row, stepping over its classes: 4096 classes (16 per thread at 8 warps) a step.
BLOCK_V = 4096
NUM_WARPS = 8


def _block(num_classes):
    return min(BLOCK_V, next_power_of_2(max(num_classes, 1)))


def _per_class(value, x):
    """``(tensor or x, scalar, is_tensor)`` for a number or a ``(V_r,)`` tensor."""
    if isinstance(value, torch.Tensor):
        return value.to(device=x.device, dtype=x.dtype).contiguous(), 0.0, True
    return x, float(value), False


@on_input_device
def shard_softmax_stats(x, local_target, softcap):
    """``(m, s, s_other, z_target)`` of each row of one shard; see ``_row_math.shard_softmax_stats``."""
    rows, num_classes = x.shape
    out = torch.empty(4, rows, dtype=x.dtype, device=x.device)
    if rows and num_classes:
        _shard_stats_kernel[(rows,)](
            x,
            local_target.contiguous(),
            out[0],
            out[1],
            out[2],
            out[3],
            *x.stride(),
            num_classes,
            *split_float(softcap or 1.0),
            BLOCK_V=_block(num_classes),
            HAS_SOFTCAP=softcap is not None,
            ACC=acc_dtype(x.dtype),
            num_warps=NUM_WARPS,
        )
    else:  # no class in this shard: the sums are empty
        out[0].fill_(torch.finfo(x.dtype).min)
        out[1:].zero_()
    return out[0], out[1], out[2], out[3]


@on_input_device
def shard_smoothing_sums(x, lse, softcap, gamma, weight):
    """``(sum_c w_c f_c, sum_c w_c g_c)`` of each row of one shard."""
    rows, num_classes = x.shape
    out = torch.zeros(2, rows, dtype=x.dtype, device=x.device)
    if rows and num_classes:
        gamma_arg, gamma_value, class_gamma = _per_class(gamma, x)
        _shard_smoothing_kernel[(rows,)](
            x,
            lse.contiguous(),
            gamma_arg,
            weight.contiguous() if weight is not None else x,
            out[0],
            out[1],
            *x.stride(),
            num_classes,
            *split_float(softcap or 1.0),
            *split_float(gamma_value),
            BLOCK_V=_block(num_classes),
            HAS_SOFTCAP=softcap is not None,
            HAS_CLASS_GAMMA=class_gamma,
            HAS_WEIGHT=weight is not None,
            ACC=acc_dtype(x.dtype),
            num_warps=NUM_WARPS,
        )
    return out[0], out[1]


@on_input_device
def shard_focal_grad(x, lse, p_coef, target_coef, smooth_coef, local_target, softcap, gamma, weight):
    """The gradient of one shard's logits from per-row coefficients."""
    rows, num_classes = x.shape
    grad = torch.empty_like(x)
    if rows and num_classes:
        gamma_arg, gamma_value, class_gamma = _per_class(gamma, x)
        _shard_grad_kernel[(rows,)](
            x,
            local_target.contiguous(),
            lse.contiguous(),
            p_coef.contiguous(),
            target_coef.contiguous(),
            smooth_coef.contiguous() if smooth_coef is not None else x,
            gamma_arg,
            weight.contiguous() if weight is not None else x,
            grad,
            *x.stride(),
            *grad.stride(),
            num_classes,
            *split_float(softcap or 1.0),
            *split_float(gamma_value),
            BLOCK_V=_block(num_classes),
            HAS_SOFTCAP=softcap is not None,
            HAS_SMOOTHING=smooth_coef is not None,
            HAS_CLASS_GAMMA=class_gamma,
            HAS_WEIGHT=weight is not None,
            ACC=acc_dtype(x.dtype),
            num_warps=NUM_WARPS,
        )
    return grad
