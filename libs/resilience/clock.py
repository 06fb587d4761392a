"""Monotonic time, injectable so tests can move it."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
monotonic: Clock = time.monotonic
