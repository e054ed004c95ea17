"""The job vocabulary: the states a job passes through and the errors the store raises."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"  # waiting for a worker
    RUNNING = "running"  # claimed; its worker renews the lease
    SUCCEEDED = "succeeded"  # the result is stored
    FAILED = "failed"  # error says why (including too many expired leases)
    CANCELLED = "cancelled"  # stopped on request


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StoreError(Exception):
    """The database could not be reached or refused the operation."""


class JobNotFoundError(StoreError):
    """No job has this id."""


class LeaseLostError(StoreError):
    """This worker no longer holds the job (its lease expired and another took it)."""


class JobStateError(StoreError):
    """The job is in a state that does not allow the operation (the message names it)."""

    def __init__(self, message: str, state: JobState) -> None:
        super().__init__(message)
        self.state = state


class JobFinishedError(JobStateError):
    """The job has already finished (it cannot be cancelled)."""


class StaleDocumentError(Exception):
    """A stored result or trial has a shape this version cannot read (written by an older
    one, or by a job kind not loaded here); the message names the job and what to do."""
