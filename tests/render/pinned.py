"""Pinned pixels: a fixed sample and the mean levels of a render compared with recorded values.

As in diffusers' own fast tests, a tiny pipeline's output for a fixed seed is pinned, so a silent
change in rendering (a scheduler setting, a model config, the order of the inputs) fails a test.
The sample is every ``stride``-th pixel; the means (per frame of a video, per channel of an image)
catch changes that the sample misses. Renders are uint8: a tolerance of one level on the sample,
and 0.02 on the means, absorbs float rounding that differs between CPUs. When a change of
rendering is intended, the failure message holds the new values to record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_ATOL = 1
MEAN_ATOL = 0.02


@dataclass(frozen=True)
class Pinned:
    sample: list[list[int]]
    means: list[float]


def measure(pixels: np.ndarray, stride: int) -> Pinned:
    """Every ``stride``-th pixel in both directions, all channels (one row per sampled image row,
    or per fourth frame of a video), and the means per video frame or per image channel."""
    if pixels.ndim == 3:
        sampled = pixels[::stride, ::stride]
        means = pixels.reshape(-1, pixels.shape[-1]).mean(axis=0)
    else:
        sampled = pixels[::4, ::stride, ::stride]
        means = pixels.reshape(pixels.shape[0], -1).mean(axis=1)
    return Pinned(
        sample=sampled.reshape(sampled.shape[0], -1).tolist(),
        means=[round(float(mean), 3) for mean in means],
    )


def assert_pinned(pixels: np.ndarray, expected: Pinned, stride: int = 32) -> None:
    """``pixels`` match the recorded sample and means within the tolerances."""
    actual = measure(pixels, stride)
    message = f"the render changed; it now measures {actual}"
    assert np.shape(actual.sample) == np.shape(expected.sample), message
    assert np.shape(actual.means) == np.shape(expected.means), message
    sample_error = np.abs(np.subtract(actual.sample, expected.sample, dtype=np.int16)).max()
    assert sample_error <= SAMPLE_ATOL, message
    assert np.abs(np.subtract(actual.means, expected.means)).max() <= MEAN_ATOL, message
