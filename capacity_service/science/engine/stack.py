"""The model-independent part of the batched engine: batches, cursors, masks, the schedule
of every row, and rows dropping out of the stack as their trials end.

Trials of one call share a data pool; trial k trains on the first N_k samples of the pool,
B_k at a time, in its own shuffled order (masking: every step computes B_max samples per
trial, which costs little while a step is bound by kernel launches, as it is for the
small models of this task). Each epoch end of a row is judged by `schedule.Schedule`, the
sequential trainer's rule, so a trial's result matches `train.train_memorization` up to
floating-point reassociation. (One difference: divergence is seen as non-finite logits at
the end of an epoch rather than as a non-finite mean loss.)

The host mirrors the cursors, so the common step (no trial in its last, partial batch)
reuses a fixed mask and nothing waits on the device between epoch ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from capacity_service.science.data import Dataset
from capacity_service.science.engine.stacked import Batch, StackedModel
from capacity_service.science.schedule import Schedule, TrainOutcome
from capacity_service.specs import Ending, TrainSpec
from capacity_service.stopping import StopCheck


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """One trial: its N, its training settings and its seeds."""

    n: int
    train: TrainSpec
    init_seed: int
    shuffle_seed: int


OutcomeCallback = Callable[[int, TrainOutcome], None]  # (trial number, outcome)
StackBuilder = Callable[[Sequence[TrialConfig]], StackedModel]


class Supervisor(Protocol):
    """What a search tells the engine while it trains (successive halving with refill).

    Trials are numbered in the order they enter: the first call's configs, then every
    admitted one."""

    def admit(self, free_rows: int) -> Sequence[TrialConfig]:
        """New trials for rows that came free (up to `free_rows`; none to let the stack
        shrink)."""
        ...

    def keep(self, trial: int, steps: int, accuracy: float) -> bool:
        """Asked at each epoch end of a running trial, after `steps` optimizer steps at a
        best accuracy of `accuracy`: False stops it (ended "rung")."""
        ...


class StackedTrainer:
    """Trains the trials of one architecture (one row each, at most `rows` at once). Row
    r of every device tensor is the r-th active trial; `trial[r]` says which; rows of
    finished trials are dropped, and a `supervisor` may refill them."""

    def __init__(
        self,
        stack: StackBuilder,
        configs: Sequence[TrialConfig],
        pool: Dataset,
        on_outcome: OutcomeCallback | None = None,
        supervisor: Supervisor | None = None,
        rows: int | None = None,
    ) -> None:
        self.stack, self.pool = stack, pool
        self.on_outcome, self.supervisor = on_outcome, supervisor
        self.rows = rows or len(configs)
        self.configs: list[TrialConfig] = []
        self.generators: list[torch.Generator] = []  # by trial number
        self.schedules: list[Schedule] = []
        self.admitted: list[float] = []  # perf_counter() at each trial's start
        self.finished: dict[int, TrainOutcome] = {}
        self.model: StackedModel | None = None
        device = pool.x.device
        self.trial: list[int] = []  # row -> trial number
        self.batch = torch.zeros(0, dtype=torch.int64, device=device)
        self.neg_lr = torch.zeros(0, device=device)
        self.momentum = torch.zeros(0, device=device)
        self.n = torch.zeros(0, dtype=torch.int64, device=device)
        self.order = torch.zeros(0, 1, dtype=torch.int64, device=device)
        self.cursor = torch.zeros(0, dtype=torch.int64, device=device)
        self.cursor_host = np.zeros(0, dtype=np.int64)
        self.n_host = np.zeros(0, dtype=np.int64)
        self.batch_host = np.zeros(0, dtype=np.int64)
        self.steps_host = np.zeros(0, dtype=np.int64)  # optimizer steps of each row
        self.pending = list(configs)

    def train(
        self, deadline: float | None = None, should_stop: StopCheck | None = None
    ) -> list[TrainOutcome | None]:
        """Run every trial to its end; at the deadline, end them all with what they
        reached; when `should_stop` says so (asked at each epoch end of any row), abandon
        the unfinished ones (None) so that nothing half-trained is reported."""
        self._add(self.pending)
        self._refill()
        while self.trial:
            assert self.model is not None
            partial = self.cursor_host + self.batch_host > self.n_host
            position = self.cursor.unsqueeze(1) + self.offsets  # (K, B_max)
            if partial.any():
                inside = self.batch_mask & (position < self.n.unsqueeze(1))
                mask = inside.to(self.pool.x.dtype)
                weight = mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
            else:
                weight = self.full_weight
            sample = self.order.gather(1, position.clamp_max(self.order.shape[1] - 1)).flatten()
            # index_select on the flat sample list: about 4x faster than x[sample] here
            x = self.pool.x.index_select(0, sample).view(*position.shape, *self.pool.x.shape[1:])
            y = self.pool.y.index_select(0, sample).view(position.shape)  # (K, B)
            self.model.step(Batch(x, y, weight), self.neg_lr, self.momentum)
            self.cursor += self.batch
            self.cursor_host += self.batch_host
            self.steps_host += 1
            ended = np.flatnonzero(self.cursor_host >= self.n_host).tolist()
            if ended:
                self._end_epochs(ended)
                if deadline is not None and time.perf_counter() > deadline:
                    self._finish(dict.fromkeys(range(len(self.trial)), "deadline"))
                elif should_stop is not None and should_stop():
                    break
                else:
                    self._refill()
        return [self.finished.get(t) for t in range(len(self.configs))]

    def _refill(self) -> None:
        """Fill the free rows with the supervisor's new trials, until it has none."""
        while self.supervisor is not None and len(self.trial) < self.rows:
            fresh = list(self.supervisor.admit(self.rows - len(self.trial)))
            if not fresh:
                return
            self._add(fresh[: self.rows - len(self.trial)])

    def _add(self, configs: Sequence[TrialConfig]) -> None:
        """Start these trials in new rows at the bottom of the stack."""
        if not configs:
            return
        for config in configs:
            if config.n > self.pool.n:
                raise ValueError(
                    f"trial N = {config.n} exceeds the data pool of {self.pool.n} samples"
                )
        device = self.pool.x.device
        first, count = len(self.configs), len(configs)
        fresh = self.stack(configs)
        if self.model is None:
            self.model = fresh
        else:
            self.model.append(fresh)
        self.configs += configs
        self.generators += [
            torch.Generator(device=device).manual_seed(c.shuffle_seed) for c in configs
        ]
        self.admitted += [time.perf_counter()] * count
        old = len(self.trial)
        rows = list(range(old, old + count))
        self.trial += list(range(first, first + count))

        def column(values: list[float] | list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        self.batch = torch.cat([self.batch, column([c.train.batch_size for c in configs],
                                                   torch.int64)])  # fmt: skip
        self.neg_lr = torch.cat([self.neg_lr, -column([c.train.lr for c in configs],
                                                      self.neg_lr.dtype)])  # fmt: skip
        self.momentum = torch.cat([self.momentum, column([c.train.momentum for c in configs],
                                                         self.momentum.dtype)])  # fmt: skip
        self.n = torch.cat([self.n, column([c.n for c in configs], torch.int64)])
        width = max(self.order.shape[1], max(c.n for c in configs))
        order = torch.zeros(len(self.trial), width, dtype=torch.int64, device=device)
        order[:old, : self.order.shape[1]] = self.order
        self.order = order
        self.cursor = torch.cat([self.cursor, torch.zeros(count, dtype=torch.int64,
                                                          device=device)])  # fmt: skip
        self.cursor_host = np.concatenate([self.cursor_host, np.zeros(count, dtype=np.int64)])
        self.n_host = np.concatenate([self.n_host, [c.n for c in configs]]).astype(np.int64)
        self.batch_host = np.concatenate(
            [self.batch_host, [c.train.batch_size for c in configs]]
        ).astype(np.int64)
        self.steps_host = np.concatenate([self.steps_host, np.zeros(count, dtype=np.int64)])
        self._masks()
        for row, accuracy in zip(rows, self._accuracy(rows)[0], strict=True):
            self.schedules.append(Schedule.start(self.configs[self.trial[row]].train, accuracy))
        for row in rows:
            self._new_epoch(row)
        # trials already perfect need no epoch (as in the sequential trainer)
        done = [r for r in rows if self.schedules[self.trial[r]].done_before_start]
        self._finish(dict.fromkeys(done, "schedule"))

    def _masks(self) -> None:
        """Per-row constants of a step that no trial ends: which of the B_max slots are
        its batch, and the weight 1 / B_k of each."""
        self.batch_max = int(self.batch_host.max()) if len(self.batch_host) else 1
        self.offsets = torch.arange(self.batch_max, device=self.n.device)
        self.batch_mask = self.offsets < self.batch.unsqueeze(1)  # (K, B_max)
        full_mask = self.batch_mask.to(self.pool.x.dtype)
        self.full_weight = full_mask / self.batch.unsqueeze(1).to(self.pool.x.dtype)

    @torch.no_grad()
    def _accuracy(self, rows: list[int]) -> tuple[list[float], list[bool]]:
        """Accuracy of these rows over each one's N samples with its current weights, and
        whether all its logits are finite (a diverged trial's are not)."""
        assert self.model is not None
        index = torch.tensor(rows, device=self.pool.x.device)
        n = self.n[index]
        n_max = int(n.max())
        hits = torch.zeros(len(rows), dtype=torch.int64, device=n.device)
        finite = torch.ones(len(rows), dtype=torch.bool, device=n.device)
        chunk = self.model.eval_chunk(len(rows))
        params = self.model.rows(index)
        for start in range(0, n_max, chunk):
            x, y = self.pool.x[start : start + chunk], self.pool.y[start : start + chunk]
            logits = self.model.evaluate(x, params)  # (R, chunk, 2)
            valid = torch.arange(start, start + len(y), device=n.device) < n.unsqueeze(1)
            hits += ((logits.argmax(dim=2) == y) & valid).sum(dim=1)
            finite &= torch.isfinite(logits).flatten(1).all(dim=1)
        return (hits.double() / n).tolist(), finite.tolist()

    def _new_epoch(self, row: int) -> None:
        n = int(self.n_host[row])
        generator = self.generators[self.trial[row]]
        self.order[row, :n] = torch.randperm(n, generator=generator, device=self.order.device)
        self.cursor[row] = 0
        self.cursor_host[row] = 0

    def _end_epochs(self, rows: list[int]) -> None:
        done: list[int] = []
        accuracies, finite = self._accuracy(rows)
        for row, accuracy, ok in zip(rows, accuracies, finite, strict=True):
            schedule = self.schedules[self.trial[row]]
            if not ok:
                schedule.diverge()
                done.append(row)
                continue
            if schedule.end_epoch(accuracy):
                done.append(row)
            else:  # the rate a plateau may have decayed
                self.neg_lr[row] = -schedule.lr
        running = [row for row in rows if row not in done]
        stopped = [
            row
            for row in running
            if self.supervisor is not None
            and not self.supervisor.keep(self.trial[row], int(self.steps_host[row]),
                                         self.schedules[self.trial[row]].best_accuracy)
        ]  # fmt: skip
        for row in running:
            if row not in stopped:
                self._new_epoch(row)
        endings: dict[int, Ending] = {row: "schedule" for row in done}
        self._finish(endings | {row: "rung" for row in stopped})

    def _finish(self, endings: dict[int, Ending]) -> None:
        """Record the outcome of these rows (each ended as it says) and drop them from
        the stack."""
        if not endings:
            return
        assert self.model is not None
        for row, ended in endings.items():
            trial = self.trial[row]
            schedule = self.schedules[trial]
            self.finished[trial] = TrainOutcome(
                accuracy=schedule.best_accuracy,
                epochs=schedule.epoch,
                diverged=schedule.diverged,
                wall_seconds=time.perf_counter() - self.admitted[trial],
                final_lr=schedule.lr,
                ended=ended,
            )
            if self.on_outcome is not None:
                self.on_outcome(trial, self.finished[trial])
        kept = [r for r in range(len(self.trial)) if r not in endings]
        keep = torch.tensor(kept, dtype=torch.int64, device=self.n.device)
        self.model.keep(keep)
        self.neg_lr, self.momentum, self.n = self.neg_lr[keep], self.momentum[keep], self.n[keep]
        self.batch = self.batch[keep]
        self.order, self.cursor = self.order[keep], self.cursor[keep]
        self.cursor_host, self.n_host = self.cursor_host[kept], self.n_host[kept]
        self.batch_host, self.steps_host = self.batch_host[kept], self.steps_host[kept]
        self.trial = [self.trial[r] for r in kept]
        self._masks()
