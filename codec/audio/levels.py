"""Levels in dBFS (full scale = 1.0): peak, RMS (a full-scale sine reads -3.01 dBFS), clipping."""

from __future__ import annotations

import numpy as np

from codec.audio import Array

SILENCE_DB = -200.0  # what the level of digital silence reads as (not -inf, so CSVs stay numeric)


def db(x: float) -> float:
    """Amplitude ratio to decibels, with silence clamped to ``SILENCE_DB``."""
    return float(20.0 * np.log10(x)) if x > 0 else SILENCE_DB


def peak_dbfs(x: Array) -> float:
    """Sample peak of ``x`` (any shape) in dBFS."""
    return db(float(np.max(np.abs(x)))) if x.size else SILENCE_DB


def rms_dbfs(x: Array) -> float:
    """RMS level of ``x`` (any shape) in dBFS."""
    if not x.size:
        return SILENCE_DB
    return db(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))


def clipped_fraction(x: Array, threshold: float = 0.999) -> float:
    """Fraction of samples whose magnitude is at or above ``threshold``."""
    return float(np.count_nonzero(np.abs(x) >= threshold) / x.size) if x.size else 0.0
