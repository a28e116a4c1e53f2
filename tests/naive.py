"""Slow, obviously correct NumPy references: one per operator, written as plain loops over
the definition, for the kernels to be compared with. Clarity over speed, always."""

from __future__ import annotations

import numpy as np

# --- global pooling ---------------------------------------------------------------------------


def global_avg_pool(x):
    return np.array([x[c].astype(np.float64).mean() for c in range(x.shape[0])], np.float32)


def global_max_pool(x):
    return np.array([np.max(x[c]) for c in range(x.shape[0])], np.float32)  # np.max propagates NaN


def gem(x, p=3.0, eps=1e-6):
    out = []
    for c in range(x.shape[0]):
        v = np.maximum(x[c].astype(np.float64), eps)  # np.maximum propagates NaN, like clamp
        out.append(np.mean(v**p) ** (1.0 / p))
    return np.array(out, np.float32)


# --- windowed pooling (pool family) -------------------------------------------------------------


# --- convolution (conv family) ------------------------------------------------------------------


def conv_source_index(i, size, mode):
    """The input index that padded position ``i`` reads along an axis of ``size``, or None for a
    zero: torch's padding modes, from their definitions."""
    if 0 <= i < size:
        return i
    if mode == "zeros":
        return None
    if mode == "replicate":  # the edge repeated
        return 0 if i < 0 else size - 1
    if mode == "circular":  # wraps around
        return i % size
    if mode == "reflect":  # mirrored about the edge, the edge itself not repeated
        return -i if i < 0 else 2 * (size - 1) - i
    raise ValueError(mode)


def conv_pad(x, top, bottom, left, right, mode):
    """(C, H, W) -> float64 (C, H + top + bottom, W + left + right), position by position."""
    c, h, w = x.shape
    out = np.zeros((c, h + top + bottom, w + left + right))
    for r in range(out.shape[1]):
        for s in range(out.shape[2]):
            i, j = conv_source_index(r - top, h, mode), conv_source_index(s - left, w, mode)
            if i is not None and j is not None:
                out[:, r, s] = x[:, i, j]
    return out


def conv2d(x, weight, bias=None, stride=1, padding=0, padding_mode="zeros", dilation=1, groups=1):
    """torch conv2d (cross-correlation) after torch's padding ``padding_mode``, in float64.

    ``padding``: int, (ph, pw), (top, bottom, left, right), "valid", or "same" (the total
    ``dilation * (k - 1)`` per axis, the odd one after)."""
    weight = np.asarray(weight, np.float64)
    out_c, per_group, kh, kw = weight.shape
    (sh, sw) = (stride, stride) if isinstance(stride, int) else stride
    (dh, dw) = (dilation, dilation) if isinstance(dilation, int) else dilation
    if padding == "valid":
        padding = 0
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    elif isinstance(padding, int):
        padding = (padding,) * 4
    elif len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    xp = conv_pad(x, *padding, padding_mode)
    oh = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((out_c, oh, ow))
    for o in range(out_c):
        g = o // (out_c // groups)
        for i in range(oh):
            for j in range(ow):
                acc = 0.0 if bias is None else float(bias[o])
                for ci in range(per_group):
                    for a in range(kh):
                        for b in range(kw):
                            acc += weight[o, ci, a, b] * xp[g * per_group + ci, i * sh + a * dh, j * sw + b * dw]
                out[o, i, j] = acc
    return out


def conv_bank(x, bank, channels="mean", **conv_args):
    """A 2-D bank (F, kh, kw) applied as the conv stage does: ``mean``: filter f on the channel
    mean gives output f; ``each``: filter f on channel c gives output c * F + f."""
    bank = np.asarray(bank, np.float64)
    if channels == "mean":
        return conv2d(x.astype(np.float64).mean(axis=0, keepdims=True), bank[:, None], **conv_args)
    outputs = [conv2d(x[c : c + 1], bank[f][None, None], **conv_args) for c in range(len(x)) for f in range(len(bank))]
    return np.concatenate(outputs)
