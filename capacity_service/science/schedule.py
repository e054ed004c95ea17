"""The training schedule of one memorization trial: plateau, decay, stop, best accuracy.

One rule, used by the sequential trainer (`train.train_memorization`) and by every row of
the batched engine, so the two cannot drift apart. After each epoch the trainer reports
the accuracy over all N samples; the schedule keeps the best one, multiplies the learning
rate by `lr_decay` after `patience` epochs without a better accuracy, and ends training at
100%, at the plateau after `max_decays` decays, or when the epoch budget is spent;
`TrainOutcome` is what either trainer reports of a trial it ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from capacity_service.specs import Ending, TrainSpec


@dataclass(frozen=True, kw_only=True)
class TrainOutcome:
    accuracy: float  # of the weights the model keeps, over all N samples
    epochs: int
    diverged: bool
    wall_seconds: float
    final_lr: float
    # what ended it: its own schedule (100%, plateau, epoch budget, divergence), a rung of
    # the successive-halving search, or the search's deadline
    ended: Ending = "schedule"


@dataclass(kw_only=True)
class Schedule:
    train: TrainSpec
    best_accuracy: float  # the starting weights count: training never ends worse
    lr: float
    epoch: int = 0
    since_best: int = 0
    decays: int = 0
    improved: bool = False  # the last epoch's accuracy is a new best
    diverged: bool = False

    @classmethod
    def start(cls, train: TrainSpec, initial_accuracy: float) -> Schedule:
        return cls(train=train, best_accuracy=initial_accuracy, lr=train.lr)

    @property
    def done_before_start(self) -> bool:
        """A model that already memorizes everything needs no epoch (nor does a budget of
        none: a retraining of 0 epochs)."""
        return self.best_accuracy == 1.0 or self.train.epochs <= 0

    def diverge(self) -> None:
        """The epoch's loss or logits were not finite: training ends here."""
        self.epoch += 1
        self.diverged = True

    def end_epoch(self, accuracy: float) -> bool:
        """Take the accuracy after one more epoch; True when training is over. The
        learning rate for the next epoch is then `lr`."""
        self.epoch += 1
        self.improved = accuracy > self.best_accuracy
        if self.improved:
            self.best_accuracy, self.since_best = accuracy, 0
        else:
            self.since_best += 1
        if accuracy == 1.0:
            return True
        if self.since_best >= self.train.patience:
            if self.decays >= self.train.max_decays:
                return True
            self.lr *= self.train.lr_decay
            self.decays, self.since_best = self.decays + 1, 0
        return self.epoch >= self.train.epochs
