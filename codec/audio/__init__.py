"""Audio: file I/O, levels, resampling, BS.1770 loudness (batch and streaming), the limiter.

Mono audio is a float32 array ``[T]`` (:data:`Array`) in full-scale units (1.0 = 0 dBFS).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
