"""How a long computation is told to stop and how it says it stopped: one check and one
exception for the engine, the capacity search and the quantization sweep."""

from __future__ import annotations

from collections.abc import Callable

# asked at each epoch end (engine, search) or before each precision (sweep): True stops
StopCheck = Callable[[], bool]


class Stopped(Exception):
    """The computation was asked to stop (cancel, shutdown, a lost lease) before it had
    its result; what it finished so far has been handed to its callbacks."""
