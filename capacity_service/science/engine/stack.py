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

import numpy as np
import torch

from capacity_service.science.data import Dataset
from capacity_service.science.engine.stacked import Batch, StackedModel
from capacity_service.science.schedule import Schedule
from capacity_service.science.train import TrainOutcome
from capacity_service.specs import TrainSpec

# Floats of activations one accuracy pass may hold (128 MiB of float32): the pass over all
# N samples of every row is cut into chunks of samples that fit (measured on LSTM-32, K = 32:
# 32 MiB and 256 MiB chunks were slower).
EVAL_FLOATS = 1 << 25


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """One trial: its N, its training settings and its seeds."""

    n: int
    train: TrainSpec
    init_seed: int
    shuffle_seed: int


CancelCheck = Callable[[], bool]
OutcomeCallback = Callable[[int, TrainOutcome], None]  # (position in configs, outcome)


class StackedTrainer:
    """Trains the K trials of `model` (one row each). Row r of every device tensor is the
    r-th active trial; `trial[r]` says which; rows of finished trials are dropped."""

    def __init__(
        self,
        model: StackedModel,
        configs: Sequence[TrialConfig],
        pool: Dataset,
        on_outcome: OutcomeCallback | None = None,
    ) -> None:
        self.model, self.configs, self.pool = model, list(configs), pool
        self.on_outcome = on_outcome
        device = pool.x.device
        self.batch_max = max(c.train.batch_size for c in configs)
        self.batch = torch.tensor([c.train.batch_size for c in configs], device=device)
        self.neg_lr = -torch.tensor([c.train.lr for c in configs], device=device)  # (K,)
        self.momentum = torch.tensor([c.train.momentum for c in configs], device=device)
        self.n = torch.tensor([c.n for c in configs], device=device)
        self.order = torch.zeros(len(configs), max(c.n for c in configs), dtype=torch.int64,
                                 device=device)  # fmt: skip
        self.cursor = torch.zeros(len(configs), dtype=torch.int64, device=device)
        self.cursor_host = np.zeros(len(configs), dtype=np.int64)
        self.n_host = np.array([c.n for c in configs], dtype=np.int64)
        self.batch_host = np.array([c.train.batch_size for c in configs], dtype=np.int64)
        self._masks()
        self.trial = list(range(len(configs)))
        self.generators = [
            torch.Generator(device=device).manual_seed(c.shuffle_seed) for c in configs
        ]
        self.schedules: list[Schedule] = []  # by trial index
        self.finished: dict[int, TrainOutcome] = {}
        self.started = time.perf_counter()

    def train(
        self, deadline: float | None = None, should_stop: CancelCheck | None = None
    ) -> list[TrainOutcome | None]:
        """Run every trial to its end; at the deadline, end them all with what they
        reached; when `should_stop` says so (asked at each epoch end of any row), abandon
        the unfinished ones (None) so that nothing half-trained is reported."""
        rows = list(range(len(self.trial)))
        for row, accuracy in zip(rows, self._accuracy(rows)[0], strict=True):
            self.schedules.append(Schedule.start(self.configs[row].train, accuracy))
        for row in rows:
            self._new_epoch(row)
        # trials already perfect need no epoch (as in the sequential trainer)
        self._finish([r for r in rows if self.schedules[r].done_before_start])
        offsets = torch.arange(self.batch_max, device=self.pool.x.device)
        while self.trial:
            partial = self.cursor_host + self.batch_host > self.n_host
            position = self.cursor.unsqueeze(1) + offsets  # (K, B_max)
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
            ended = np.flatnonzero(self.cursor_host >= self.n_host).tolist()
            if ended:
                self._end_epochs(ended)
                if deadline is not None and time.perf_counter() > deadline:
                    self._finish(list(range(len(self.trial))))
                elif should_stop is not None and should_stop():
                    break
        return [self.finished.get(t) for t in range(len(self.configs))]

    def _masks(self) -> None:
        """Per-row constants of a step that no trial ends: which of the B_max slots are
        its batch, and the weight 1 / B_k of each."""
        offsets = torch.arange(self.batch_max, device=self.n.device)
        self.batch_mask = offsets < self.batch.unsqueeze(1)  # (K, B_max)
        full_mask = self.batch_mask.to(self.pool.x.dtype)
        self.full_weight = full_mask / self.batch.unsqueeze(1).to(self.pool.x.dtype)

    @torch.no_grad()
    def _accuracy(self, rows: list[int]) -> tuple[list[float], list[bool]]:
        """Accuracy of these rows over each one's N samples with its current weights, and
        whether all its logits are finite (a diverged trial's are not)."""
        index = torch.tensor(rows, device=self.pool.x.device)
        n = self.n[index]
        n_max = int(n.max())
        hits = torch.zeros(len(rows), dtype=torch.int64, device=n.device)
        finite = torch.ones(len(rows), dtype=torch.bool, device=n.device)
        chunk = max(1, EVAL_FLOATS // (len(rows) * self.model.floats_per_sample))
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
        for row in rows:
            if row not in done:
                self._new_epoch(row)
        self._finish(done)

    def _finish(self, rows: list[int]) -> None:
        """Record the outcome of these rows and drop them from the stack."""
        if not rows:
            return
        for row in rows:
            trial = self.trial[row]
            schedule = self.schedules[trial]
            self.finished[trial] = TrainOutcome(
                accuracy=schedule.best_accuracy,
                epochs=schedule.epoch,
                diverged=schedule.diverged,
                wall_seconds=time.perf_counter() - self.started,
                final_lr=schedule.lr,
            )
            if self.on_outcome is not None:
                self.on_outcome(trial, self.finished[trial])
        gone = set(rows)
        kept = [r for r in range(len(self.trial)) if r not in gone]
        keep = torch.tensor(kept, dtype=torch.int64, device=self.n.device)
        self.model.keep(keep)
        self.neg_lr, self.momentum, self.n = self.neg_lr[keep], self.momentum[keep], self.n[keep]
        self.batch = self.batch[keep]
        self.order, self.cursor = self.order[keep], self.cursor[keep]
        self.cursor_host, self.n_host = self.cursor_host[kept], self.n_host[kept]
        self.batch_host = self.batch_host[kept]
        self.trial = [self.trial[r] for r in kept]
        self._masks()
