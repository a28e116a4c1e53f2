"""Window geometry shared by every windowed stage: output sizes, padding and ceil-mode rules.

These are PyTorch's rules (``pooling_output_shape`` and ``conv2d``'s), so that a poolcli stage
and its torch twin agree on every edge. Pure integer arithmetic: ``inspect`` uses it and no
kernel runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from poolcli.errors import ShapeError


@dataclass(frozen=True)
class Window:
    """A resolved 2-D window: kernel, stride, padding (top/left), dilation and ceil mode.

    Examples
    --------
    >>> Window.of(kernel_size=(2, 2)).output_hw(4, 4)
    (2, 2)
    >>> Window.of(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True).output_hw(6, 7)
    (4, 4)
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    @classmethod
    def of(cls, kernel_size, stride=None, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
        return cls(tuple(kernel_size), tuple(stride or kernel_size), tuple(padding), tuple(dilation), bool(ceil_mode))

    @property
    def effective(self) -> tuple[int, int]:
        """The span of the dilated kernel: ``(k - 1) * d + 1`` per axis."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation))

    def check_padding(self) -> str | None:
        """PyTorch's rule: padding at most half the effective kernel. A message, or None."""
        for axis, p, e in zip("hw", self.padding, self.effective):
            if p > e // 2:
                return f"padding must be at most half the (dilated) kernel, got padding {p} for a kernel of {e} along {axis}"
        return None

    def output_hw(self, height: int, width: int, stage: str = "") -> tuple[int, int]:
        """Output (H', W') with torch's pooling rules; :class:`ShapeError` if the window cannot fit."""
        sizes = []
        for size, k, s, p, e in zip((height, width), self.kernel, self.stride, self.padding, self.effective):
            out = pooled_size(size, e, s, p, self.ceil_mode)
            if out < 1:
                raise ShapeError(
                    f"a {self.kernel[0]}x{self.kernel[1]} window (dilated span {self.effective[0]}x{self.effective[1]}, "
                    f"padding {self.padding[0]}x{self.padding[1]}) does not fit a {height}x{width} map",
                    stage,
                )
            sizes.append(out)
        return tuple(sizes)


def pooled_size(size: int, span: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """PyTorch's ``pooling_output_shape``: in ceil mode the last window must start inside the
    input or the left padding.

    Examples
    --------
    >>> pooled_size(5, 2, 2, 0, False), pooled_size(5, 2, 2, 0, True)
    (2, 3)
    """
    numerator = size + 2 * pad - span + ((stride - 1) if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def axis_padding(padding, axis: int, size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding along ``axis`` (0: rows, 1: columns) of ``size`` for ``padding``:
    an int pair ``(ph, pw)``, four numbers ``(top, left, bottom, right)`` (ONNX ``pads`` order),
    ``valid`` (none), ``same`` or ``same_upper`` / ``same_lower``.

    ``same`` follows torch (stride 1): the total ``dilation * (kernel - 1)`` split with the extra
    one after. ``same_upper`` and ``same_lower`` follow ONNX's ``auto_pad``: the output is
    ``ceil(size / stride)`` and the total padding it needs, ``(out - 1) * stride + dilation *
    (kernel - 1) + 1 - size`` (at least 0), is split with the extra one after (upper) or before
    (lower).

    >>> axis_padding("same", 0, 10, 4), axis_padding("same_upper", 0, 7, 3, 2), axis_padding("same_lower", 0, 8, 2, 1)
    ((1, 2), (1, 1), (1, 0))
    >>> axis_padding((1, 2, 3, 4), 1, 10, 3)
    (2, 4)
    """
    if padding == "valid":
        return 0, 0
    if padding == "same":
        total = dilation * (kernel - 1)
        return total // 2, total - total // 2
    if padding in ("same_upper", "same_lower"):
        out = -(-size // stride)
        total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
        small, large = total // 2, total - total // 2
        return (small, large) if padding == "same_upper" else (large, small)
    if len(padding) == 4:
        return padding[axis], padding[axis + 2]
    return padding[axis], padding[axis]


def adaptive_bins(size: int, bins: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive bins: bin ``i`` spans ``[floor(i*L/n), ceil((i+1)*L/n))``.

    >>> adaptive_bins(5, 3)
    [(0, 2), (1, 4), (3, 5)]
    """
    return [((i * size) // bins, -(-((i + 1) * size) // bins)) for i in range(bins)]
