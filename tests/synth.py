"""Speech-like test audio: voiced syllables with gliding pitch and formants, noise
bursts and pauses, written as float32 WAVs with a ``manifest.csv`` like the one the
normalize stage writes. Used until (and besides) the real data stages' output."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from codec.audio.loudness import integrated_lufs

RATE = 16000


def speechlike(seconds: float, rng: np.random.Generator, rate: int = RATE, rms_dbfs: float = -20.0) -> np.ndarray:
    """Mono float32 ``[T]``: a sequence of 80–300 ms voiced or fricative syllables."""
    n = int(seconds * rate)
    out = np.zeros(n, dtype=np.float64)
    pos = int(rng.uniform(0.0, 0.1) * rate)
    while pos < n:
        length = int(rng.uniform(0.08, 0.3) * rate)
        t = np.arange(length) / rate
        env = np.sin(np.pi * np.arange(length) / length) ** 2
        if rng.random() < 0.8:
            f0 = rng.uniform(100, 240) * (1 + rng.uniform(-0.2, 0.2) * t / t[-1])
            phase = 2 * np.pi * np.cumsum(f0) / rate
            formants = rng.uniform([300, 900, 2200], [900, 2000, 3200])
            seg = np.zeros(length)
            for h in range(1, 30):
                fh = h * f0.mean()
                if fh > rate / 2 - 500:
                    break
                gain = sum(np.exp(-0.5 * ((fh - f) / 120.0) ** 2) for f in formants) + 0.02
                seg += gain / h**0.5 * np.sin(h * phase)
        else:
            seg = rng.standard_normal(length) * 0.3
            seg = np.diff(seg, prepend=0.0)  # fricative-like: tilted to the highs
        out[pos : pos + length] += (seg * env)[: n - pos]
        pos += length + int(rng.uniform(0.0, 0.15) * rate)
    rms = np.sqrt(np.mean(out**2)) + 1e-12
    return (out * (10 ** (rms_dbfs / 20) / rms)).astype(np.float32)


def write_dataset(folder: Path, n_clips: int = 16, seconds: float = 2.0, seed: int = 0) -> Path:
    """Write ``n_clips`` WAVs and ``manifest.csv`` into ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_clips):
        x = speechlike(seconds, rng)
        name = f"clip{i:03d}.wav"
        sf.write(folder / name, x, RATE, subtype="FLOAT")
        rows.append(
            {
                "id": f"clip{i:03d}",
                "path": name,
                "duration_s": len(x) / RATE,
                "sample_rate": RATE,
                "lufs": round(integrated_lufs(x, RATE), 4),
            }
        )
    with (folder / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder
