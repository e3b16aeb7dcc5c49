"""Temporal consistency for affine-invariant depth and disparity in video (issue 21).

Every frame of an affine-invariant model is normalised on its own, so its scale and shift jump from frame
to frame (flicker). `TemporalAligner` fits, per frame t, a scale s_t > 0 and shift b_t so that
s_t * x_t + b_t agrees with a running reference, in the prediction's own space (the one the model is
affine in):

1. Samples: a fixed grid of about `samples` pixels (every k-th row and column), the same for every frame.
2. Fit: least squares of the frame's samples onto the reference's, then `iterations` rounds that drop
   samples whose residual exceeds `outlier_mads` median absolute deviations (moving objects, edges) and
   refit. A non-positive or non-finite scale keeps s = 1 and matches the medians instead.
3. Anchor: the reference starts as frame 0 (s = 1, b = 0) and follows the aligned frames as an
   exponential moving average, ref <- momentum * ref + (1 - momentum) * aligned. Fitting to this average
   rather than to the previous frame keeps the fit's noise from adding up into a drift of the scale over
   long clips (measured: 1000 static noisy frames end where they began, tests/test_video.py), while it
   still follows a moving camera.

Then one clip-wide normalisation maps the aligned values' range over all frames to [0, 1], so a value (and
its colour) means the same in every frame. Both passes read one frame at a time (`ClipAlignment`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLES = 4096  # grid points per frame the fit uses
MOMENTUM = 0.9  # weight of the reference's past in the running reference
ITERATIONS = 2  # outlier-rejection rounds after the first fit
OUTLIER_MADS = 3.0  # residuals beyond this many median absolute deviations are dropped


def sample_grid(size: tuple[int, int], samples: int = SAMPLES) -> tuple[slice, slice]:
    """Row and column slices that pick about `samples` pixels evenly from an image of `size` (H, W)."""
    h, w = size
    step = max(1, int(np.sqrt(h * w / max(1, samples))))
    return slice(step // 2, None, step), slice(step // 2, None, step)


def fit_affine(x: np.ndarray, ref: np.ndarray, iterations: int = ITERATIONS,
               outlier_mads: float = OUTLIER_MADS) -> tuple[float, float]:
    """(s, b) minimising |s * x + b - ref|^2 over the samples (1-D float arrays), with outlier rejection;
    s > 0 (else s = 1 and b matches the medians)."""
    x = x.astype(np.float64)
    ref = ref.astype(np.float64)
    keep = np.isfinite(x) & np.isfinite(ref)
    s, b = 1.0, 0.0
    for _ in range(iterations + 1):
        xs, rs = x[keep], ref[keep]
        if xs.size < 2 or np.ptp(xs) == 0:
            break
        s, b = np.polyfit(xs, rs, 1)
        residual = np.abs(s * x + b - ref)
        mad = np.median(residual[keep])
        if mad == 0:
            break
        keep = keep & (residual <= outlier_mads * mad / 0.6745)
    if not (np.isfinite(s) and np.isfinite(b) and s > 0):
        s, b = 1.0, float(np.nanmedian(ref) - np.nanmedian(x))
    return float(s), float(b)


@dataclass
class TemporalAligner:
    """Fits each frame, in order, to the running reference (module docstring); `add(frame)` -> (s, b)."""

    samples: int = SAMPLES
    momentum: float = MOMENTUM
    reference: np.ndarray | None = field(default=None, repr=False)

    def add(self, frame: np.ndarray) -> tuple[float, float]:
        """frame: float [H, W] (the model's output, 1 channel) -> (s, b) aligning it to the clip so far."""
        rows, cols = sample_grid(frame.shape[:2], self.samples)
        x = np.asarray(frame[rows, cols], dtype=np.float64).ravel()
        if self.reference is None:
            s, b = 1.0, 0.0
            self.reference = x
        else:
            s, b = fit_affine(x, self.reference)
            self.reference = self.momentum * self.reference + (1 - self.momentum) * (s * x + b)
        return s, b


@dataclass
class ClipAlignment:
    """The per-frame (s, b) of a clip and the clip-wide range of the aligned values.

    `fit(frames)` is the first pass (frames: an iterable of float [H, W], e.g. the rows of a memmap);
    `apply(t, frame)` the second: frame t aligned and normalised to [0, 1] (clipped), float32.
    """

    params: list[tuple[float, float]] = field(default_factory=list)
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def fit(cls, frames, samples: int = SAMPLES, momentum: float = MOMENTUM) -> ClipAlignment:
        aligner = TemporalAligner(samples, momentum)
        params, low, high = [], np.inf, -np.inf
        for frame in frames:
            s, b = aligner.add(frame)
            params.append((s, b))
            finite = np.asarray(frame, dtype=np.float64)
            low = min(low, s * np.nanmin(finite) + b)
            high = max(high, s * np.nanmax(finite) + b)
        if not params:
            return cls()
        return cls(params, float(low), float(high))

    def apply(self, t: int, frame: np.ndarray) -> np.ndarray:
        s, b = self.params[t]
        span = self.high - self.low
        if not span > 0:
            return np.zeros_like(frame, dtype=np.float32)
        aligned = (s * np.asarray(frame, dtype=np.float64) + b - self.low) / span
        return np.clip(aligned, 0.0, 1.0).astype(np.float32)


def flicker(frames) -> float:
    """Mean |frame_t - frame_{t-1}| over consecutive frames (the flicker measure of issue 21)."""
    total, count, previous = 0.0, 0, None
    for frame in frames:
        frame = np.asarray(frame, dtype=np.float64)
        if previous is not None:
            total += float(np.abs(frame - previous).mean())
            count += 1
        previous = frame
    return total / count if count else 0.0
