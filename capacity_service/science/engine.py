"""The batched engine: train K memorization trials of one architecture at once.

Small models waste a processor when trained one at a time: each step is a handful of tiny
kernels whose launch cost dwarfs their arithmetic. Here K FCDNN trials are one stacked
model (weights (K, out, in), batched matrix products, hand-written backward pass), each
trial with its own initialization, learning rate, momentum, decay factor, N, batch size
and shuffling, following exactly the schedule of `train.train_memorization` (the same
permutations, batches, plateau and stopping rules), so a trial's result matches the
sequential trainer's up to floating-point reassociation. (One difference: divergence is
seen as non-finite logits at the end of an epoch rather than as a non-finite mean loss,
since the engine never computes the loss, only its gradient.)

Trials of one call share a data pool; trial k trains on the first N_k samples of the pool,
B_k at a time (masking: every step computes B_max samples per trial, which costs nothing
extra while the step is bound by kernel launches, as it is for small models). A trial
that finishes is dropped from the stack, so it stops costing compute. Kinds without a
batched implementation yet (CNN, RNN) run their trials one after another through the
sequential trainer, and say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from capacity_service.science.data import Dataset
from capacity_service.science.models import FCDNN, ModelSpecT, build_model
from capacity_service.science.train import TrainOutcome, train_memorization
from capacity_service.specs import FCDNNSpec, TrainSpec


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """One trial: its N, its training settings and its seeds."""

    n: int
    train: TrainSpec
    init_seed: int
    shuffle_seed: int


@dataclass(frozen=True, kw_only=True)
class EngineRun:
    outcomes: tuple[TrainOutcome | None, ...]  # in the order of the configs; None: not run
    engine: str  # "batched" or "sequential" (the kind has no batched implementation)


CancelCheck = Callable[[], bool]
OutcomeCallback = Callable[[int, TrainOutcome], None]  # (position in configs, outcome)


def train_trials(
    model: ModelSpecT,
    pool: Dataset,
    configs: Sequence[TrialConfig],
    should_stop: CancelCheck | None = None,
    deadline: float | None = None,
    on_outcome: OutcomeCallback | None = None,
) -> EngineRun:
    """Train every trial of `configs` on the first N of `pool`; batched where possible.

    At the `deadline` (a time.perf_counter() value) trials end early with the best
    accuracy they reached, as if their epoch budget had run out. `should_stop` is asked at
    each epoch's end (batched) or between trials (sequential); trials it or the deadline
    leaves unfinished are None in the result.
    `on_outcome` hears of each trial the moment it finishes (so it can be stored at once).
    """
    for config in configs:
        if config.n > pool.n:
            raise ValueError(f"trial N = {config.n} exceeds the data pool of {pool.n} samples")
    if isinstance(model, FCDNNSpec):
        stacked = StackedFCDNN(model, configs, pool, on_outcome) if configs else None
        outcomes = stacked.train(deadline, should_stop) if stacked is not None else []
        return EngineRun(outcomes=tuple(outcomes), engine="batched")
    done: list[TrainOutcome | None] = [None] * len(configs)
    for index, config in enumerate(configs):
        if should_stop is not None and should_stop():
            break
        if index and deadline is not None and time.perf_counter() > deadline:
            break  # the first trial always runs, so a search has at least one
        done[index] = outcome = _train_sequential(model, pool, config, deadline)
        if on_outcome is not None:
            on_outcome(index, outcome)
    return EngineRun(outcomes=tuple(done), engine="sequential")


def _train_sequential(
    model: ModelSpecT, pool: Dataset, config: TrialConfig, deadline: float | None
) -> TrainOutcome:
    data = Dataset(x=pool.x[: config.n], y=pool.y[: config.n])
    network = build_model(model, config.init_seed, pool.x.device)
    return train_memorization(network, data, config.train, config.shuffle_seed, deadline=deadline)


class StackedFCDNN:
    """K FCDNN trials as one model. Row r of every device tensor is the r-th active trial;
    `trial[r]` says which; finished rows are dropped."""

    def __init__(
        self,
        spec: FCDNNSpec,
        configs: Sequence[TrialConfig],
        pool: Dataset,
        on_outcome: OutcomeCallback | None = None,
    ) -> None:
        self.configs = list(configs)
        self.on_outcome = on_outcome
        self.pool = pool
        device = pool.x.device
        self.batch = torch.tensor([c.train.batch_size for c in configs], device=device)
        self.batch_max = max(c.train.batch_size for c in configs)
        models = [build_model(spec, c.init_seed, device) for c in configs]
        self.weights: list[torch.Tensor] = []  # (K, out, in) per layer
        self.biases: list[torch.Tensor] = []  # (K, out) per layer
        for layer in range(spec.depth + 1):
            linears = [_linear(m, layer) for m in models]
            self.weights.append(torch.stack([lin.weight.detach() for lin in linears]))
            self.biases.append(torch.stack([lin.bias.detach() for lin in linears]))
        self.velocity_w = [torch.zeros_like(w) for w in self.weights]
        self.velocity_b = [torch.zeros_like(b) for b in self.biases]
        self.lr = torch.tensor([c.train.lr for c in configs], device=device)  # (K,)
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
        # The schedule of each trial, by trial index, on the host (read once per epoch).
        self.epoch = [0] * len(configs)
        self.since_best = [0] * len(configs)
        self.decays = [0] * len(configs)
        self.best_accuracy = [0.0] * len(configs)
        self.current_lr = [c.train.lr for c in configs]
        self.diverged = [False] * len(configs)
        self.finished: dict[int, TrainOutcome] = {}
        self.started = time.perf_counter()

    def train(
        self, deadline: float | None = None, should_stop: CancelCheck | None = None
    ) -> list[TrainOutcome | None]:
        """Run every trial to its end; at the deadline, end them all with what they
        reached; when `should_stop` says so (asked at each epoch's end), abandon the
        unfinished ones (None) so that nothing half-trained is reported."""
        rows = list(range(len(self.trial)))
        for row, accuracy in zip(rows, self._accuracy(rows)[0], strict=True):
            self.best_accuracy[row] = accuracy
        for row in rows:
            self._new_epoch(row)
        # trials already perfect need no epoch (as in the sequential trainer)
        self._finish([r for r in rows if self.best_accuracy[r] == 1.0])
        offsets = torch.arange(self.batch_max, device=self.pool.x.device)
        while self.trial:
            # the host mirrors the cursors, so that the common step (no trial in its
            # last, partial batch) reuses a fixed mask and nothing waits on the device
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
            x = self.pool.x.index_select(0, sample).view(*position.shape, -1)  # (K, B, n_in)
            y = self.pool.y.index_select(0, sample).view(position.shape)  # (K, B)
            self._step(x, y, weight)
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
        its batch, and the weight 1 / B_k of each; also -lr."""
        offsets = torch.arange(self.batch_max, device=self.n.device)
        self.batch_mask = offsets < self.batch.unsqueeze(1)  # (K, B_max)
        self.full_mask = self.batch_mask.to(self.pool.x.dtype)
        self.full_weight = self.full_mask / self.batch.unsqueeze(1).to(self.pool.x.dtype)
        self.minus_one = torch.full((len(self.n), self.batch_max, 1), -1.0, device=self.n.device)
        self.neg_lr = -self.lr

    # -- forward and backward -------------------------------------------------------

    @staticmethod
    def _forward(
        x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (K, B, n_in) -> logits (K, B, 2), and the input of every layer."""
        inputs = [x]
        h = x
        for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # (K, B, out)
            if layer < len(weights) - 1:
                h = h.relu_()
                inputs.append(h)
        return h, inputs

    def _step(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> None:
        """One SGD-with-momentum step of every active trial on the mean cross-entropy of
        its own batch (`weight` is 1 / count on its samples, 0 on padding).

        The loss itself is never computed: only its gradient is needed, and divergence
        shows at the end of the epoch as non-finite logits (see `_accuracy`)."""
        logits, inputs = self._forward(x, self.weights, self.biases)
        # d(mean CE)/d logits = (softmax - onehot) / count
        grad = torch.softmax(logits, dim=2)  # (K, B, 2)
        grad.scatter_add_(2, y.unsqueeze(2), self.minus_one[: len(self.trial)])
        grad.mul_(weight.unsqueeze(2))
        neg_lr, momentum = self.neg_lr.view(-1, 1, 1), self.momentum.view(-1, 1, 1)
        for layer in range(len(self.weights) - 1, -1, -1):
            a = inputs[layer]  # (K, B, in)
            grad_w = torch.bmm(grad.transpose(1, 2), a)  # (K, out, in)
            grad_b = grad.sum(dim=1)  # (K, out)
            if layer > 0:  # through the layer (old weights) and the ReLU below it
                grad = torch.ops.aten.threshold_backward(torch.bmm(grad, self.weights[layer]), a, 0)
            # v = m v + g; w -= lr v, each one fused pass over memory
            v_w, v_b = self.velocity_w[layer], self.velocity_b[layer]
            torch.addcmul(grad_w, v_w, momentum, out=v_w)
            torch.addcmul(grad_b, v_b, momentum.view(-1, 1), out=v_b)
            torch.addcmul(self.weights[layer], v_w, neg_lr, out=self.weights[layer])
            torch.addcmul(self.biases[layer], v_b, neg_lr.view(-1, 1), out=self.biases[layer])

    @torch.no_grad()
    def _accuracy(self, rows: list[int]) -> tuple[list[float], list[bool]]:
        """Accuracy of these rows over each one's N samples with its current weights, and
        whether all its logits are finite (a diverged trial's are not)."""
        index = torch.tensor(rows, device=self.pool.x.device)
        n = self.n[index]
        n_max = int(n.max())
        x = self.pool.x[:n_max].unsqueeze(0).expand(len(rows), -1, -1)
        logits, _ = self._forward(
            x, [w[index] for w in self.weights], [b[index] for b in self.biases]
        )
        hits = logits.argmax(dim=2) == self.pool.y[:n_max]  # (R, n_max)
        valid = torch.arange(n_max, device=x.device) < n.unsqueeze(1)
        finite = torch.isfinite(logits).flatten(1).all(dim=1)
        return ((hits & valid).sum(dim=1).double() / n).tolist(), finite.tolist()

    # -- the schedule (mirrors train.train_memorization) ----------------------------

    def _new_epoch(self, row: int) -> None:
        n = int(self.n[row])
        generator = self.generators[self.trial[row]]
        self.order[row, :n] = torch.randperm(n, generator=generator, device=self.order.device)
        self.cursor[row] = 0
        self.cursor_host[row] = 0

    def _end_epochs(self, rows: list[int]) -> None:
        done: list[int] = []
        accuracies, finite = self._accuracy(rows)
        for row, accuracy, ok in zip(rows, accuracies, finite, strict=True):
            self.epoch[self.trial[row]] += 1
            if not ok:
                self.diverged[self.trial[row]] = True
                done.append(row)
                continue
            trial = self.trial[row]
            train = self.configs[trial].train
            if accuracy > self.best_accuracy[trial]:
                self.best_accuracy[trial], self.since_best[trial] = accuracy, 0
            else:
                self.since_best[trial] += 1
            if accuracy == 1.0:
                done.append(row)
                continue
            if self.since_best[trial] >= train.patience:
                if self.decays[trial] >= train.max_decays:
                    done.append(row)
                    continue
                self.current_lr[trial] *= train.lr_decay
                self.lr[row] = self.current_lr[trial]
                self.neg_lr[row] = -self.current_lr[trial]
                self.decays[trial] += 1
                self.since_best[trial] = 0
            if self.epoch[trial] >= train.epochs:
                done.append(row)
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
            self.finished[trial] = TrainOutcome(
                accuracy=self.best_accuracy[trial],
                epochs=self.epoch[trial],
                diverged=self.diverged[trial],
                wall_seconds=time.perf_counter() - self.started,
                final_lr=self.current_lr[trial],
            )
            if self.on_outcome is not None:
                self.on_outcome(trial, self.finished[trial])
        gone = set(rows)
        kept = [r for r in range(len(self.trial)) if r not in gone]
        keep = torch.tensor(kept, dtype=torch.int64, device=self.n.device)
        for tensors in (self.weights, self.biases, self.velocity_w, self.velocity_b):
            tensors[:] = [t[keep] for t in tensors]
        self.lr, self.momentum, self.n = self.lr[keep], self.momentum[keep], self.n[keep]
        self.batch = self.batch[keep]
        self.order, self.cursor = self.order[keep], self.cursor[keep]
        self.cursor_host, self.n_host = self.cursor_host[kept], self.n_host[kept]
        self.batch_host = self.batch_host[kept]
        self.trial = [self.trial[r] for r in kept]
        self._masks()


def _linear(model: torch.nn.Module, layer: int) -> torch.nn.Linear:
    assert isinstance(model, FCDNN)
    hidden = list(model.hidden)
    linear = hidden[layer] if layer < len(hidden) else model.output
    assert isinstance(linear, torch.nn.Linear)
    return linear
