"""The level settings, in one place: the loudness the training data is normalized to, its peak
ceiling and limiter window, and the gain rule inference uses to bring any input there.

Who reads what:

- the data stages (``codec normalize``, ``codec validate``) take them from ``params.yaml:
  normalize`` (their defaults are the ones below);
- the train stage records the ones its data had in the checkpoint (``level``), so a model says
  what it was trained for (:meth:`LevelSettings.from_checkpoint`);
- inference (``codec encode``, the served model) and evaluation read them from the checkpoint,
  never from params: what is evaluated is what ``codec encode`` does with that model.

The gain rule (:func:`gain_for`), for an input of integrated loudness ``input_lufs``:

- digital silence: 0 dB (there is nothing to normalize);
- no 400 ms block above BS.1770's -70 LUFS absolute gate: 0 dB (by the standard's definition
  this is silence plus noise; raising it would only bring up the noise);
- otherwise ``target - loudness``, but at most ``max_gain_db`` (+30 dB), so a faint
  recording's hiss is not pushed to speech level;

rounded to float32, the precision the bitstream carries, so encoder and decoder use the very
same number.
"""

from __future__ import annotations

import dataclasses
import math
import typing as tp

import numpy as np

TARGET_LUFS = -16.0  # normalize.target_lufs: BS.1770 integrated loudness of the training clips
PEAK_CEILING_DB = -1.0  # normalize.peak_ceiling_db: sample-peak ceiling of the look-ahead limiter
LIMITER_WINDOW_MS = 5.0  # normalize.limiter_window_ms: the limiter's look-ahead and release
MAX_GAIN_DB = 30.0  # inference only: the most a faint input is raised

Level = tp.Literal["normal", "capped", "below_gate", "silent"]


@dataclasses.dataclass(frozen=True)
class LevelSettings:
    """The level a model's training data had, and so the level inference brings inputs to.

    ``peak_ceiling_db=None`` turns the limiter off (experiments only: the training data was
    always limited)."""

    target_lufs: float = TARGET_LUFS
    peak_ceiling_db: float | None = PEAK_CEILING_DB
    limiter_window_ms: float = LIMITER_WINDOW_MS
    max_gain_db: float = MAX_GAIN_DB

    def limiter_window(self, rate: int) -> int:
        """The limiter window in samples at ``rate`` (at least one)."""
        return max(1, round(self.limiter_window_ms * 1e-3 * rate))

    @property
    def ceiling(self) -> float | None:
        """The peak ceiling as a linear amplitude (``None``: no limiter)."""
        return None if self.peak_ceiling_db is None else 10.0 ** (self.peak_ceiling_db / 20.0)

    def with_target(self, target_lufs: float | None) -> LevelSettings:
        """These settings with another loudness target (``None``: unchanged)."""
        return self if target_lufs is None else dataclasses.replace(self, target_lufs=float(target_lufs))

    def to_checkpoint(self) -> dict[str, float | None]:
        """What the train stage records under a checkpoint's ``level`` key."""
        return {
            "target_lufs": self.target_lufs,
            "peak_ceiling_db": self.peak_ceiling_db,
            "limiter_window_ms": self.limiter_window_ms,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: tp.Mapping[str, tp.Any]) -> LevelSettings:
        """The settings a checkpoint was trained for.

        Reads ``ckpt["level"]`` (written by the train stage); a checkpoint from before it
        carries only ``target_lufs`` (at its top, in ``params`` or ``params["normalize"]``) and
        gets the project's ceiling and window, the only ones its data could have had. Values
        out of range are ignored in favour of the defaults.
        """
        level = _section(ckpt, "level")
        params = _section(ckpt, "params")
        normalize = _section(params, "normalize")
        target = _first_in_range(
            [
                level.get("target_lufs"),
                ckpt.get("target_lufs"),
                params.get("target_lufs"),
                normalize.get("target_lufs"),
            ],
            -70.0,
            0.0,
        )
        ceiling = _first_in_range([level.get("peak_ceiling_db")], -20.0, 0.0)
        window = _first_in_range([level.get("limiter_window_ms")], 0.1, 100.0)
        return cls(
            target_lufs=TARGET_LUFS if target is None else target,
            peak_ceiling_db=PEAK_CEILING_DB if ceiling is None else ceiling,
            limiter_window_ms=LIMITER_WINDOW_MS if window is None else window,
        )


def _section(d: tp.Mapping[str, tp.Any], key: str) -> tp.Mapping[str, tp.Any]:
    value = d.get(key)
    return value if isinstance(value, dict) else {}


def _first_in_range(values: tp.Iterable[tp.Any], lo: float, hi: float) -> float | None:
    for value in values:
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and lo <= value <= hi
        ):
            return float(value)
    return None


def gain_for(
    input_lufs: float, silent: bool, target_lufs: float, max_gain_db: float = MAX_GAIN_DB
) -> tuple[float, Level]:
    """The gain (dB, float32-exact) that brings an input of ``input_lufs`` to ``target_lufs``,
    and which case of the rule (module docstring) applied."""
    level: Level
    if silent:
        gain, level = 0.0, "silent"
    elif not math.isfinite(input_lufs):
        gain, level = 0.0, "below_gate"
    elif target_lufs - input_lufs > max_gain_db:
        gain, level = max_gain_db, "capped"
    else:
        gain, level = target_lufs - input_lufs, "normal"
    return float(np.float32(gain)), level
