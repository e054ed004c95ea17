"""How `regress` and `experiments run` hand their jobs to a runner and collect them.

A runner takes jobs with `submit` (a handle back) and `wait` blocks until at least one
of the given handles has finished. The API's runner queues every job at submit, so N
workers run a suite N at a time; the local runner runs one job per `wait`, in the order
submitted, in this process. `capacity_service.reproduce.runners` has both.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from capacity_service.store.vocabulary import JobState

Progress = Callable[[str], None]  # one line per event, e.g. printed to stderr


@dataclass(frozen=True)
class Finished:
    """How one submitted job ended: its result document, or why there is none."""

    handle: int
    state: JobState  # succeeded, failed or cancelled
    result: BaseModel | None  # the job kind's result model
    error: str | None = None  # what the job's failure said

    def describe(self) -> str:
        return self.state + (f": {self.error}" if self.error else "")


class Runner(Protocol):
    where: str  # for messages: "through URL", "in this process (cpu)"

    def submit(self, kind: str, spec: BaseModel, label: str) -> int:
        """Hand over one job, its spec validated (`label` names it in messages); its
        handle."""
        ...

    def wait(self, handles: Collection[int]) -> list[Finished]:
        """Block until at least one of `handles` has finished; those that have."""
        ...

    def cancel(self, handles: Collection[int]) -> None:
        """Give up these jobs (best effort): what a suite that cannot finish leaves."""
        ...


class RunsFailed(Exception):
    """Some jobs of a suite failed; the others finished."""

    def __init__(self, failed: list[str], total: int) -> None:
        super().__init__(f"{len(failed)} of {total} runs failed: {'; '.join(failed)}")
        self.failed = failed


class Batch:
    """Jobs submitted to one runner and collected as they finish, with a progress line
    per finished job ("finished NAME: succeeded (3 of 8)"). Jobs may be added while
    others run (a sweep once its capacity result is in). On an error or Ctrl-C the jobs
    still pending are cancelled, so none is left running for a suite that stopped."""

    def __init__(self, runner: Runner, total: int, progress: Progress | None = None) -> None:
        self.runner, self.total, self.progress = runner, total, progress
        self.labels: dict[int, str] = {}
        self.pending: set[int] = set()
        self.done = 0

    def submit(self, kind: str, spec: BaseModel, label: str) -> int:
        try:
            handle = self.runner.submit(kind, spec, label)
        except BaseException:
            self.abandon()
            raise
        self.labels[handle] = label
        self.pending.add(handle)
        return handle

    def finished(self) -> list[Finished]:
        """The next jobs to finish (at least one); [] when none is pending."""
        if not self.pending:
            return []
        try:
            ended = self.runner.wait(self.pending)
        except BaseException:
            self.abandon()
            raise
        for outcome in ended:
            self.pending.discard(outcome.handle)
            self.done += 1
            if self.progress is not None:
                self.progress(
                    f"finished {self.labels[outcome.handle]}: {outcome.describe()} "
                    f"({self.done} of {self.total})"
                )
        return ended

    def abandon(self) -> None:
        if self.pending:
            self.runner.cancel(self.pending)
            self.pending.clear()
