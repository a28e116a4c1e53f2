"""Slow, obviously correct NumPy references: one per operator, written as plain loops over
the definition, for the kernels to be compared with. Clarity over speed, always."""

from __future__ import annotations

import math

import numpy as np

# --- element-wise ---------------------------------------------------------------------------------


def activation(x, fn, alpha=None, beta=None, min=None, max=None, slope=None):
    """Each element on its own, through Python floats (ONNX's defaults for the parameters);
    ``slope`` (prelu) broadcast against ``x`` first."""
    lo = -math.inf if min is None else min
    hi = math.inf if max is None else max

    def sigmoid(v):
        return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))

    def one(v, s):
        if v != v:
            return v
        if fn == "relu":
            return v if v > 0 else 0.0
        if fn == "abs":
            return abs(v)
        if fn == "square":
            return v * v
        if fn == "sigmoid":
            return sigmoid(v)
        if fn == "tanh":
            return math.tanh(v)
        if fn == "sign_sqrt":
            return math.copysign(math.sqrt(abs(v)), v) if v != 0 else 0.0
        if fn == "leaky_relu":
            return v if v >= 0 else (0.01 if alpha is None else alpha) * v
        if fn == "elu":
            return v if v > 0 else (1.0 if alpha is None else alpha) * math.expm1(v)
        if fn == "clip":
            return lo if v < lo else hi if v > hi else v
        if fn == "hard_sigmoid":
            a, b = (0.2 if alpha is None else alpha), (0.5 if beta is None else beta)
            return 0.0 if a * v + b <= 0 else 1.0 if a * v + b >= 1 else a * v + b
        if fn == "hard_swish":
            return v * (0.0 if v <= -3 else 1.0 if v >= 3 else v / 6 + 0.5)
        if fn == "silu":
            return v * sigmoid(v)
        if fn == "gelu":
            return 0.5 * v * math.erfc(-v / math.sqrt(2))  # = 1 + erf(v / sqrt 2), without cancellation
        if fn == "gelu_tanh":
            return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
        if fn == "erf":
            return math.erf(v)
        if fn == "exp":
            return math.exp(v) if v < 700 else math.inf
        if fn == "softplus":
            return v if v > 700 else math.log1p(math.exp(v))
        if fn == "prelu":
            return v if v >= 0 else s * v
        return v

    slopes = np.broadcast_to(np.float64(0) if slope is None else np.asarray(slope, np.float64), x.shape)
    values = [one(float(v), float(s)) for v, s in zip(x.ravel(), slopes.ravel())]
    with np.errstate(over="ignore"):
        return np.array(values, np.float32).reshape(x.shape)


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


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def pool_out_size(size, span, stride, pad, ceil_mode):
    """torch's documented formula: floor (or ceil) of (size + 2*pad - span) / stride, plus one;
    in ceil mode a last window starting beyond the input and the left padding is dropped."""
    fraction = (size + 2 * pad - span) / stride
    out = int(np.ceil(fraction) if ceil_mode else np.floor(fraction)) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _window_taps(shape, kernel, stride, padding, dilation, ceil_mode):
    """(oh, ow) and taps(i, j): the (r, s) positions of output (i, j)'s window in row-major
    order, positions outside the input included."""
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel), _pair(padding), _pair(dilation)
    sh, sw = _pair(stride if stride is not None else kernel)
    oh = pool_out_size(shape[1], (kh - 1) * dh + 1, sh, ph, ceil_mode)
    ow = pool_out_size(shape[2], (kw - 1) * dw + 1, sw, pw, ceil_mode)

    def taps(i, j):
        return [(i * sh - ph + a * dh, j * sw - pw + b * dw) for a in range(kh) for b in range(kw)]

    return oh, ow, taps


def _pool_windows(x, kernel, stride, padding, dilation, ceil_mode, reduce, dtype=np.float32):
    """out[c, i, j] = reduce(c, taps of window (i, j)) for every output."""
    oh, ow, taps = _window_taps(x.shape, kernel, stride, padding, dilation, ceil_mode)
    out = np.zeros((x.shape[0], oh, ow), dtype)
    for c in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                out[c, i, j] = reduce(c, taps(i, j))
    return out


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """torch max_pool2d: padding is -inf; a tap wins if greater or NaN; the argmax starts at the
    window's first tap with r, s >= 0 (flat index r * W + s; beyond the input when a dilated
    window has no tap inside it, as in torch)."""
    H, W = x.shape[1:]

    def best(c, taps):
        r0, s0 = next((r, s) for r, s in taps if r >= 0 and s >= 0)
        value, index = -np.inf, r0 * W + s0
        for r, s in [(r, s) for r, s in taps if 0 <= r < H and 0 <= s < W]:
            v = x[c, r, s]
            if v > value or np.isnan(v):
                value, index = v, r * W + s
        return value, index

    values = _pool_windows(x, kernel_size, stride, padding, dilation, ceil_mode, lambda c, t: best(c, t)[0])
    if not return_indices:
        return values
    indices = _pool_windows(x, kernel_size, stride, padding, dilation, ceil_mode, lambda c, t: best(c, t)[1], np.int64)
    return values, indices


def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """torch avg_pool2d: the sum of in-bounds taps over a divisor that counts, with
    count_include_pad, the taps inside the padded input (not those beyond it in ceil mode),
    else the in-bounds taps; divisor_override replaces it."""
    H, W = x.shape[1:]
    ph, pw = _pair(padding)

    def mean(c, taps):
        inside = [(r, s) for r, s in taps if 0 <= r < H and 0 <= s < W]
        padded = [(r, s) for r, s in taps if -ph <= r < H + ph and -pw <= s < W + pw]
        total = sum(float(x[c, r, s]) for r, s in inside)
        divisor = divisor_override or (len(padded) if count_include_pad else len(inside))
        return total / divisor

    return _pool_windows(x, kernel_size, stride, padding, 1, ceil_mode, mean)


def lp_pool(x, p, kernel_size, stride=None, ceil_mode=False):
    """(sum |x|^p)^(1/p) over the in-bounds taps of each window."""
    H, W = x.shape[1:]

    def norm(c, taps):  # float64 powers (NumPy's, which overflow to inf where Python's raise)
        inside = [(r, s) for r, s in taps if 0 <= r < H and 0 <= s < W]
        with np.errstate(over="ignore"):
            return sum(np.abs(np.float64(x[c, r, s])) ** p for r, s in inside) ** (1.0 / p)

    return _pool_windows(x, kernel_size, stride, 0, 1, ceil_mode, norm)


def adaptive_bins(size, n):
    """Bin i spans [floor(i*L/n), ceil((i+1)*L/n))."""
    return [(int(np.floor(i * size / n)), int(np.ceil((i + 1) * size / n))) for i in range(n)]


def adaptive_pool(x, output_size, pool):
    """torch adaptive_{max,avg}_pool2d; output_size (h, w), a None entry keeps that size."""
    C, H, W = x.shape
    oh, ow = _pair(output_size)
    oh, ow = oh or H, ow or W
    out = np.zeros((C, oh, ow), np.float32)
    for c in range(C):
        for i, (r0, r1) in enumerate(adaptive_bins(H, oh)):
            for j, (s0, s1) in enumerate(adaptive_bins(W, ow)):
                block = x[c, r0:r1, s0:s1].astype(np.float64)
                with np.errstate(invalid="ignore"):  # inf - inf is NaN, as it should be
                    out[c, i, j] = np.max(block) if pool == "max" else np.mean(block)  # np.max propagates NaN
    return out


def spp(x, levels=(1, 2, 4), pool="max"):
    return np.concatenate([adaptive_pool(x, n, pool).reshape(-1) for n in levels]).astype(np.float32)


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


# --- fractional, stochastic, soft pooling and unpooling ------------------------------------------


def fractional_starts(sample, size, out_size, kernel):
    """torch's window starts along one axis, each step in float32 as torch computes them for a
    float32 map: ``int((i + u) * alpha) - int(u * alpha)``, ``alpha = (size - k) / (out - 1)``;
    the last window starts at ``size - k``."""
    if out_size == 1:
        return [size - kernel]
    u = np.float32(sample)
    alpha = np.float32(size - kernel) / np.float32(out_size - 1)
    return [int((np.float32(i) + u) * alpha) - int(u * alpha) for i in range(out_size - 1)] + [size - kernel]


def fractional_max_pool(x, kernel_size, output_size, samples):
    """torch fractional_max_pool2d; ``samples``: (C, 2) rows of (u_h, u_w) (torch's
    ``_random_samples`` holds (u_w, u_h)). np.max propagates NaN, as torch does."""
    (kh, kw), (oh, ow) = _pair(kernel_size), _pair(output_size)
    out = np.zeros((x.shape[0], oh, ow), np.float32)
    for c in range(x.shape[0]):
        rows = fractional_starts(samples[c][0], x.shape[1], oh, kh)
        cols = fractional_starts(samples[c][1], x.shape[2], ow, kw)
        for i, r in enumerate(rows):
            for j, s in enumerate(cols):
                out[c, i, j] = np.max(x[c, r : r + kh, s : s + kw])
    return out


def _floor_windows(x, kernel_size, stride):
    """(c, i, j, values) for every floor-mode window, its values row-major as Python floats."""
    oh, ow, taps = _window_taps(x.shape, kernel_size, stride, 0, 1, False)
    for c in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                yield c, i, j, [float(x[c, r, s]) for r, s in taps(i, j)]


def _floor_output(x, kernel_size, stride):
    """Zeros of the floor-mode output shape."""
    oh, ow, _ = _window_taps(x.shape, kernel_size, stride, 0, 1, False)
    return np.zeros((x.shape[0], oh, ow), np.float32)


def stochastic_pool(x, kernel_size, stride=None, mode="eval", u=None):
    """Zeiler & Fergus on a = max(x, 0) (NaN kept): eval ``sum a^2 / sum a``; train the first
    a > 0 whose running sum reaches ``u[c, i, j] * sum a``. Sums in float64, left to right.
    An all-zero window gives 0, a NaN NaN, else a +inf gives +inf."""
    out = _floor_output(x, kernel_size, stride)
    for c, i, j, values in _floor_windows(x, kernel_size, stride):
        a = [0.0 if v <= 0 else v for v in values]
        total = 0.0
        for v in a:
            total += v
        if total == 0 or math.isnan(total) or total == math.inf:
            out[c, i, j] = total
        elif mode == "eval":
            out[c, i, j] = sum(v * v for v in a) / total
        else:
            running = 0.0
            for v in a:
                running += v
                if v > 0 and running >= u[c, i, j] * total:
                    out[c, i, j] = v
                    break
    return out


def soft_pool(x, kernel_size, stride=None):
    """``sum softmax(a) * a`` per window: NaN gives NaN, else +inf gives +inf, all -inf gives
    -inf; otherwise the -inf terms have weight 0 and the rest is the stable formula in float64."""
    out = _floor_output(x, kernel_size, stride)
    for c, i, j, values in _floor_windows(x, kernel_size, stride):
        if any(math.isnan(v) for v in values):
            out[c, i, j] = math.nan
        elif math.inf in values:
            out[c, i, j] = math.inf
        elif all(v == -math.inf for v in values):
            out[c, i, j] = -math.inf
        else:
            a = np.array([v for v in values if v != -math.inf])
            weights = np.exp(a - a.max())
            out[c, i, j] = np.sum(weights * a) / np.sum(weights)
    return out


def max_unpool(x, indices, output_size):
    """torch max_unpool2d run on one thread: zeros, then x[c].flat[p] written at flat position
    indices[c].flat[p] for p in order, so a later write wins."""
    oh, ow = output_size
    out = np.zeros((x.shape[0], oh * ow), np.float32)
    for c in range(x.shape[0]):
        for value, index in zip(x[c].ravel(), indices[c].ravel()):
            out[c, index] = value
    return out.reshape(x.shape[0], oh, ow)


# --- center, corner, strip pooling, upsampling, pyramid fusion ------------------------------------


def center_pool(x, mode="window", kernel_size=None, stride=None):
    """window: the value at (i*sh + (kh-1)//2, j*sw + (kw-1)//2) for every floor-mode window;
    cross: the maximum of row i plus the maximum of column j (np.max propagates NaN)."""
    C, H, W = x.shape
    if mode == "cross":
        out = np.zeros_like(x)
        for c, i, j in np.ndindex(x.shape):
            with np.errstate(invalid="ignore"):  # inf + -inf is NaN, as it should be
                out[c, i, j] = np.max(x[c, i, :]) + np.max(x[c, :, j])
        return out
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride or kernel_size)
    oh, ow = pool_out_size(H, kh, sh, 0, False), pool_out_size(W, kw, sw, 0, False)
    out = np.zeros((C, oh, ow), np.float32)
    for c, i, j in np.ndindex(out.shape):
        out[c, i, j] = x[c, i * sh + (kh - 1) // 2, j * sw + (kw - 1) // 2]
    return out


def directional_max(x, direction):
    """CornerNet's pools, each position included: top = max over the rows below (k >= i),
    bottom = over the rows above (k <= i), left = over the columns to the right (l >= j),
    right = over the columns to the left (l <= j)."""
    out = np.zeros_like(x)
    for c, i, j in np.ndindex(x.shape):
        span = {
            "top": x[c, i:, j],
            "bottom": x[c, : i + 1, j],
            "left": x[c, i, j:],
            "right": x[c, i, : j + 1],
        }[direction]
        out[c, i, j] = np.max(span)
    return out


def corner_pool(x, corner="top_left", cascade=False):
    """top_left = Top(x) + Left(x); cascaded, Top(x + Left(x)) + Left(x + Top(x)); likewise
    for the other corners (the vertical pool named first)."""
    vertical, horizontal = corner.split("_")

    def V(y):
        return directional_max(y, vertical)

    def Hz(y):
        return directional_max(y, horizontal)

    with np.errstate(invalid="ignore"):  # inf + -inf is NaN, as it should be
        return V(x + Hz(x)) + Hz(x + V(x)) if cascade else V(x) + Hz(x)


def strip_pool(x, reduce="avg", fuse="add"):
    """r = the mean (float64, rounded to float32) or max of row i, q = that of column j;
    add: r + q; gate: x * sigmoid(r + q)."""

    def strip(values):
        if reduce == "max":
            return np.max(values)
        with np.errstate(invalid="ignore"):
            return np.float32(values.astype(np.float64).mean())

    out = np.zeros_like(x)
    for c, i, j in np.ndindex(x.shape):
        with np.errstate(invalid="ignore"):
            s = strip(x[c, i, :]) + strip(x[c, :, j])
            out[c, i, j] = s if fuse == "add" else x[c, i, j] * activation(np.array([s]), "sigmoid")[0]
    return out


def upsample_sources(in_size, out_size, scale, mode):
    """ATen's source rule along one axis for output index o: [(input index, weight), ...].

    An axis whose size does not change is copied (weight 1, and for bilinear a second weight 0
    on the same pixel); nearest halves the index when the size exactly doubles, else takes
    min(floor(o * scale), L - 1) in float32; bilinear reads scale * (o + 0.5) - 0.5 rounded
    once to float32, clamped at 0, and weighs its floor and the next pixel (the last repeats)."""
    f32 = np.float32

    def sources(o):
        if mode == "nearest":
            if out_size == in_size:
                return [(o, 1.0)]
            if out_size == 2 * in_size:
                return [(o // 2, 1.0)]
            return [(min(int(np.floor(f32(o) * scale)), in_size - 1), 1.0)]
        if out_size == in_size:
            return [(o, f32(1)), (o, f32(0))]
        real = max(f32(float(scale) * (o + 0.5) - 0.5), f32(0))  # one rounding, as ATen's fused multiply-add
        index = min(int(np.floor(real)), in_size - 1)
        weight = min(max(real - f32(index), f32(0)), f32(1))
        return [(index, f32(1) - weight), (min(index + 1, in_size - 1), weight)]

    return [sources(o) for o in range(out_size)]


def upsample(x, size=None, scale_factor=None, mode="nearest"):
    """torch interpolate (align_corners=False): the output size is ``size`` or
    floor(L * scale_factor); the float32 scale is 1 / scale_factor when one is given, else
    L / size; every tap is multiplied by its weight (0 * inf is NaN, as in torch)."""
    C, H, W = x.shape
    if size is not None:
        (oh, ow) = _pair(size)
        scales = (np.float32(H) / np.float32(oh), np.float32(W) / np.float32(ow))
    else:
        sh, sw = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
        oh, ow = math.floor(float(H) * sh), math.floor(float(W) * sw)
        scales = (np.float32(1.0 / sh), np.float32(1.0 / sw))
    rows, cols = upsample_sources(H, oh, scales[0], mode), upsample_sources(W, ow, scales[1], mode)
    out = np.zeros((C, oh, ow), np.float32)
    for c, i, j in np.ndindex(out.shape):
        with np.errstate(invalid="ignore"):
            out[c, i, j] = sum(
                float(x[c, r, s]) * float(u) * float(v) for r, u in rows[i] for s, v in cols[j]
            )
    return out


def pyramid_fuse(xs, output_size, pool="max", fuse="max"):
    """Each map adaptively pooled to output_size, then per position the max (NaN wins), sum or
    mean of the pooled values."""
    pooled = [adaptive_pool(x, output_size, pool) for x in xs]
    out = np.zeros_like(pooled[0])
    for c, i, j in np.ndindex(out.shape):
        values = np.array([float(p[c, i, j]) for p in pooled])
        with np.errstate(invalid="ignore"):
            out[c, i, j] = {"max": np.max, "sum": np.sum, "mean": np.mean}[fuse](values)
    return out


# --- R-MAC and Hopfield pooling --------------------------------------------------------------------


def rmac_grid(H, W, levels):
    """cirtorch's R-MAC regions as (top, left, side) squares, the whole map left out. Its float
    steps are float32 torch tensors, redone here one float32 operation at a time."""
    f32 = np.float32
    w = min(H, W)
    Hd = Wd = 0
    if H != W:
        gaps = []
        for s in range(2, 8):
            b = (f32(1) / f32(s - 1)) * f32(max(H, W) - w)  # torch: int / tensor = reciprocal * int
            gaps.append(abs((f32(w * w) - b * f32(w)) / f32(w * w) - f32(0.4)))
        extra = gaps.index(min(gaps)) + 1  # the first of equal gaps, like torch.min
        if H < W:
            Wd = extra
        else:
            Hd = extra

    def starts(length, wl, wl2, n):
        b = 0.0 if n == 1 else (length - wl) / (n - 1)
        return [int(math.floor(f32(f32(i) * f32(b)) + f32(wl2))) - wl2 for i in range(n)]

    grid = []
    for l in range(1, levels + 1):
        wl = math.floor(2 * w / (l + 1))
        wl2 = math.floor(wl / 2 - 1)
        if wl == 0:
            continue
        for top in starts(H, wl, wl2, l + Hd):
            for left in starts(W, wl, wl2, l + Wd):
                grid.append((top, left, wl))
    return grid


def rmac(x, levels=3, eps=1e-6):
    """Sum over the whole map and every grid region of the region's max per channel divided by
    (its L2 norm over channels + eps), in float64."""
    C, H, W = x.shape
    blocks = [x] + [x[:, t : t + s, l : l + s] for t, l, s in rmac_grid(H, W, levels)]
    total = np.zeros(C)
    for block in blocks:
        m = np.array([np.max(block[c]) for c in range(C)], np.float64)  # np.max propagates NaN
        total += m / (math.sqrt(sum(v * v for v in m)) + eps)
    return total.astype(np.float32)


def hopfield_pool(x, beta=None, steps=1, query="mean"):
    """Patterns X[n] = x[:, n // W, n % W]; xi = X^T softmax(beta * X xi), ``steps`` times, from the
    mean pattern or the max per channel; beta defaults to 1/sqrt(C). float64 throughout."""
    C, H, W = x.shape
    X = [x[:, n // W, n % W].astype(np.float64) for n in range(H * W)]
    beta = 1 / math.sqrt(C) if beta is None else beta
    xi = np.mean(X, axis=0) if query == "mean" else np.max(X, axis=0)
    for _ in range(steps):
        scores = [beta * float(np.dot(p, xi)) for p in X]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        xi = sum(wt * p for wt, p in zip(weights, X)) / sum(weights)
    return np.asarray(xi, np.float32)


# --- whitening -------------------------------------------------------------------------------------


def whiten(x, mean, projection, eps=1e-6):
    """x / ||x||, minus the mean, times each row of the projection, then / (its norm + eps);
    one float64 sum at a time."""
    x = [float(v) for v in x]
    norm = math.sqrt(sum(v * v for v in x))
    x = [v / max(norm, 1e-12) - float(m) for v, m in zip(x, mean)]
    y = [sum(float(p) * v for p, v in zip(row, x)) for row in projection]
    norm = math.sqrt(sum(v * v for v in y))
    return np.array([v / (norm + eps) for v in y], np.float32)


# --- layers of trained networks -------------------------------------------------------------------


def _at(array, index):
    """``array`` read at ``index`` of the broadcast result: size-1 axes read 0, missing leading
    axes are dropped (NumPy's broadcasting, written out)."""
    array = np.asarray(array)
    index = index[len(index) - array.ndim :]
    return array[tuple(0 if n == 1 else i for n, i in zip(array.shape, index))]


def arithmetic(op, *operands):
    """``a op b`` (``op`` one of + - * /) element by element over the broadcast shape, in float32
    as the stages compute; ``+`` of several operands sums them left to right."""
    shape = np.broadcast_shapes(*(np.shape(a) for a in operands))
    out = np.empty(shape, np.float32)
    for index in np.ndindex(*shape):
        value = np.float32(_at(operands[0], index))
        for other in operands[1:]:
            b = np.float32(_at(other, index))
            with np.errstate(all="ignore"):
                value = {"+": value + b, "-": value - b, "*": value * b, "/": value / b}[op]
        out[index] = value
    return out


def batch_norm(x, weight, bias, mean, var, eps=1e-5):
    out = np.empty(x.shape, np.float64)
    for c in range(x.shape[0]):
        out[c] = (x[c].astype(np.float64) - mean[c]) / math.sqrt(var[c] + eps) * weight[c] + bias[c]
    return out


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Over the channels at each position of a map, over a vector's elements."""
    if x.ndim == 1:
        return layer_norm(x[:, None, None], weight, bias, eps)[:, 0, 0]
    out = np.empty(x.shape, np.float64)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            v = [float(t) for t in x[:, i, j]]
            mean = sum(v) / len(v)
            var = sum((t - mean) ** 2 for t in v) / len(v)
            for c, t in enumerate(v):
                y = (t - mean) / math.sqrt(var + eps)
                out[c, i, j] = y * (1 if weight is None else weight[c]) + (0 if bias is None else bias[c])
    return out


def softmax(x):
    """Over the channels at each position of a map, over a vector's elements."""
    if x.ndim == 1:
        return softmax(x[:, None, None])[:, 0, 0]
    out = np.empty(x.shape, np.float64)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            v = [float(t) for t in x[:, i, j]]
            top = max(v)
            e = [math.exp(t - top) for t in v]
            for c in range(len(v)):
                out[c, i, j] = e[c] / sum(e)
    return out


def linear(x, weight, bias=None):
    return np.array([sum(float(w) * float(v) for w, v in zip(row, x)) + (0 if bias is None else float(bias[o]))
                     for o, row in enumerate(weight)])


def resize(x, out_hw, scales, mode="nearest", coordinate_mode="half_pixel", nearest_mode="round_prefer_floor"):
    """ONNX Resize of a (C, H, W) map, output by output, from the operator's definition: each
    output index maps to an input coordinate (in float32, as onnxruntime computes it), which
    nearest rounds and linear interpolates, reading the edge past the map."""
    f = np.float32

    def coordinate(i, out, size, s):
        i, s = f(i), f(s)
        if s == 1:  # onnxruntime copies an axis of scale 1, whatever the mode
            return i
        if coordinate_mode == "asymmetric":
            return i / s
        if coordinate_mode == "align_corners":
            return f(0) if out == 1 else i * f(size - 1) / f(out - 1)
        if coordinate_mode == "pytorch_half_pixel":
            return (i + f(0.5)) / s - f(0.5) if out > 1 else f(0)
        if coordinate_mode == "tf_half_pixel_for_nn":
            return (i + f(0.5)) / s
        if coordinate_mode == "half_pixel_symmetric":  # onnxruntime: the offset in float32, the rest in float64
            offset = f(size) / f(2) * (f(1) - f(out) / (s * f(size)))
            return f(float(offset) + (float(i) + 0.5) / float(s) - 0.5)
        return (i + f(0.5)) / s - f(0.5)

    def nearest(c, size):
        c = float(c)
        below = math.floor(c)
        if c == below:
            index = below
        elif nearest_mode == "floor":
            index = below
        elif nearest_mode == "ceil":
            index = below + 1
        elif nearest_mode == "round_prefer_ceil":
            index = below if c - below < 0.5 else below + 1
        else:
            index = below if c - below <= 0.5 else below + 1
        return min(max(index, 0), size - 1)

    def taps(c, size):
        c = min(max(float(c), 0.0), size - 1.0)
        first = min(int(c), size - 1)
        second = min(first + 1, size - 1)
        return [(first, 1 - (c - first)), (second, c - first)]

    (_, h, w), (oh, ow) = x.shape, out_hw
    out = np.zeros((x.shape[0], oh, ow))
    for i in range(oh):
        cy = coordinate(i, oh, h, scales[0])
        for j in range(ow):
            cx = coordinate(j, ow, w, scales[1])
            if mode == "nearest":
                out[:, i, j] = x[:, nearest(cy, h), nearest(cx, w)]
            else:
                for a, wa in taps(cy, h):
                    for b, wb in taps(cx, w):
                        out[:, i, j] += wa * wb * x[:, a, b].astype(np.float64)
    return out


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """torch conv_transpose2d by its definition, in float64: input pixel (c, i, j) adds
    ``x * weight[c, o]`` at rows ``i * sh + a * dh - top`` and columns ``j * sw + b * dw - left``
    of output channel ``g * O/groups + o``; ``padding``: int, (ph, pw) or (top, left, bottom,
    right) as ONNX's pads."""
    weight = np.asarray(weight, np.float64)
    c_in, per_group_out, kh, kw = weight.shape
    (sh, sw), (dh, dw), (oph, opw) = _pair(stride), _pair(dilation), _pair(output_padding)
    if isinstance(padding, int):
        padding = (padding,) * 4
    elif len(padding) == 2:
        padding = (padding[0], padding[1], padding[0], padding[1])
    top, left, bottom, right = padding
    _, h, w = x.shape
    oh = (h - 1) * sh - top - bottom + dh * (kh - 1) + oph + 1
    ow = (w - 1) * sw - left - right + dw * (kw - 1) + opw + 1
    out = np.zeros((per_group_out * groups, oh, ow))
    per_group_in = c_in // groups
    for c in range(c_in):
        g = c // per_group_in
        for i in range(h):
            for j in range(w):
                for o in range(per_group_out):
                    for a in range(kh):
                        for b in range(kw):
                            r, s = i * sh + a * dh - top, j * sw + b * dw - left
                            if 0 <= r < oh and 0 <= s < ow:
                                out[g * per_group_out + o, r, s] += float(x[c, i, j]) * weight[c, o, a, b]
    if bias is not None:
        out += np.asarray(bias, np.float64)[:, None, None]
    return out
