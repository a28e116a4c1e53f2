"""Write the fixed weights of configs/retrieval.yaml into configs/retrieval/.

    python scripts/make_retrieval_weights.py

Each file is a grouped 1 x W convolution (``groups`` = channels) that folds a pooled W-column
layout about its vertical axis: symmetric combinations of the columns (``*_sym``) and, taken
with ``activation: abs``, antisymmetric ones (``*_anti``). Both are unchanged when the image
is mirrored left to right, and together (orthonormal rows) they keep the layout's energy. The
blob filters carry a gain of 200 that brings the small responses of the zero-mean LoG filter
to the scale of the edge features.
"""

from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent.parent / "configs" / "retrieval"
BLOB_GAIN = 200.0

FOLDS = {
    4: (np.array([[1, 1, 1, 1], [1, -1, -1, 1]]) / 2, np.array([[1, 0, 0, -1], [0, 1, -1, 0]]) / np.sqrt(2)),
    2: (np.array([[1, 1]]) / np.sqrt(2), np.array([[1, -1]]) / np.sqrt(2)),
}


def fold(channels: int, width: int, part: str, gain: float = 1.0) -> np.ndarray:
    """Weights ``(channels * F, 1, 1, width)``: output ``c * F + f`` is filter f on channel c."""
    filters = FOLDS[width][0 if part == "sym" else 1] * gain
    return np.ascontiguousarray(np.repeat(filters[None], channels, axis=0).reshape(-1, 1, 1, width), np.float32)


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    for width in (4, 2):
        for part in ("sym", "anti"):
            np.save(FOLDER / f"edges_fold{width}_{part}.npy", fold(6, width, part))
            np.save(FOLDER / f"blobs_fold{width}_{part}.npy", fold(1, width, part, BLOB_GAIN))
    print(f"wrote the fold weights to {FOLDER}")


if __name__ == "__main__":
    main()
