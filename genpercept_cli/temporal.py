"""Temporal consistency for affine-invariant depth and disparity in video (issue 21).

Every frame of an affine-invariant model is normalised on its own, so its scale and shift jump from frame
to frame (flicker). `TemporalAligner` fits, per frame t, a scale s_t > 0 and shift b_t so that
s_t * x_t + b_t agrees with a keyframe, in the prediction's own space (the one the model is affine in):

1. Samples: a fixed grid of about `samples` pixels (every k-th row and column), the same for every frame.
2. Fit: least squares of the frame's samples onto the reference's, then `iterations` rounds that drop
   samples whose residual exceeds `outlier_mads` median absolute deviations (moving objects, edges) and
   refit. A non-positive or non-finite scale keeps s = 1 and matches the medians instead.
3. Anchor: the keyframe is frame 0 (s = 1, b = 0), and an aligned frame becomes the next keyframe only
   when the scene has changed: when the median |aligned - keyframe| exceeds `refresh` times the keyframe's
   spread (its 5-95 % range). Chaining every frame to the previous one (or to a running average of them)
   would add up the fit's noise and its regression-dilution bias (least squares with noise in x shrinks s)
   into a drift of the scale: measured on 1000 static noisy frames, chaining through a running average
   shrank the last frame's scale by 10 %, the keyframe keeps it (tests/test_video.py).

Then one clip-wide normalisation maps the aligned values' range over all frames to [0, 1], so a value (and
its colour) means the same in every frame. Both passes read one frame at a time (`ClipAlignment`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLES = 4096  # grid points per frame the fit uses
REFRESH = 0.05  # a new keyframe when the median aligned difference exceeds this fraction of its spread
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
        xc, rc = xs - xs.mean(), rs - rs.mean()  # closed form, not polyfit: BLAS threads would change the bits
        s = float((xc * rc).sum() / (xc * xc).sum())
        b = float(rs.mean() - s * xs.mean())
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
    """Fits each frame, in order, to the current keyframe (module docstring); `add(frame)` -> (s, b)."""

    samples: int = SAMPLES
    refresh: float = REFRESH
    keyframe: np.ndarray | None = field(default=None, repr=False)  # aligned samples
    keyframes: int = 0

    def add(self, frame: np.ndarray) -> tuple[float, float]:
        """frame: float [H, W] (the model's output, 1 channel) -> (s, b) aligning it to the clip so far."""
        rows, cols = sample_grid(frame.shape[:2], self.samples)
        x = np.asarray(frame[rows, cols], dtype=np.float64).ravel()
        s, b = (1.0, 0.0) if self.keyframe is None else fit_affine(x, self.keyframe)
        aligned = s * x + b
        if self.keyframe is None or self._changed(aligned):
            self.keyframe, self.keyframes = aligned, self.keyframes + 1
        return s, b

    def _changed(self, aligned: np.ndarray) -> bool:
        low, high = np.nanpercentile(self.keyframe, [5, 95])
        return bool(np.nanmedian(np.abs(aligned - self.keyframe)) > self.refresh * max(high - low, 1e-12))


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
    def fit(cls, frames, samples: int = SAMPLES, refresh: float = REFRESH) -> ClipAlignment:
        aligner = TemporalAligner(samples, refresh)
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
