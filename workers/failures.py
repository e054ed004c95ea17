"""Why a job failed, and whether another attempt can succeed.

Transient failures (the database away, the device out of memory, a job this one needs
not finished yet) go back to the queue with exponential backoff; permanent ones (an
invalid spec, a bug, a dependency that failed) fail the job at once. Lease loss is
neither: another worker holds the job and finishes it."""

from __future__ import annotations

from dataclasses import dataclass

from capacity_service.store.vocabulary import StoreError


class DependencyNotReady(Exception):
    """A job this one needs (a sweep's capacity job) has no result yet."""


class DependencyFailed(Exception):
    """A job this one needs ended without a result; waiting cannot help."""


@dataclass(frozen=True)
class Failure:
    kind: str  # "database", "out-of-memory", "dependency" (transient) or "error"
    transient: bool
    message: str


def classify(error: BaseException) -> Failure:
    message = f"{error.__class__.__name__}: {error}"
    if isinstance(error, DependencyNotReady):
        return Failure("dependency", True, str(error))
    if isinstance(error, StoreError):
        return Failure("database", True, message)
    if is_out_of_memory(error):
        return Failure("out-of-memory", True, message)
    return Failure("error", False, message)


def is_out_of_memory(error: BaseException) -> bool:
    """A device allocation failed (torch raises `OutOfMemoryError`, a RuntimeError, for
    CUDA; older builds and other backends only say so in the message)."""
    if error.__class__.__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """The wait before attempt `attempt + 1`: base, 2 base, 4 base, ... at most cap."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))
