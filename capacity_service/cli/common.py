"""What every `capacity` subcommand shares: spec loading, error messages, progress."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

from pydantic import BaseModel, ValidationError

from capacity_service.specs import MODEL_KINDS, CNNSpec, FCDNNSpec, RNNSpec

if TYPE_CHECKING:
    from capacity_service.science.train import EpochProgress

EXIT_BAD_INPUT = 2
M = TypeVar("M", bound=BaseModel)


class UsageError(Exception):
    """Bad input from the user: printed as one message, exit code 2, nothing run."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)


def load_json_file(path: str, what: str = "spec file") -> dict[str, object]:
    """The JSON object in `path` (`-` reads standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        fail(f"{path}: cannot read the {what} ({error.strerror})")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        fail(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}")
    if not isinstance(document, dict):
        fail(f"{path}: the {what} must be a JSON object, got {type(document).__name__}")
    return document


def validate(model: type[M], document: dict[str, object], source: str) -> M:
    """`document` as a `model`, or a UsageError naming every invalid field."""
    try:
        return model.model_validate(document)
    except ValidationError as error:
        fail(f"invalid spec ({source}):\n{describe_validation_error(error)}")


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: the field's dotted path, what is wrong, and the value given."""
    lines = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        if len(loc) > 1 and loc[0] == "model" and loc[1] in MODEL_KINDS:
            del loc[1]  # the union's tag, not a field
        where = ".".join(loc)
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field; remove it (check the spelling and the model kind)"
        given = problem.get("input")
        suffix = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        lines.append(f"  {where}: {message}{suffix}" if where else f"  {message}")
    return "\n".join(lines)


def set_path(document: dict[str, object], dotted: str, value: Any) -> None:
    """document["a"]["b"] = value for dotted = "a.b", creating objects on the way."""
    *parents, leaf = dotted.split(".")
    node = document
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            fail(f"{key}: must be a JSON object to set {dotted}")
        node = child
    node[leaf] = value


# flag destination -> dotted path in the spec document
MODEL_FLAGS = {
    "width": "model.width",
    "depth": "model.depth",
    "n_in": "model.n_in",
    "kernel": "model.kernel",
    "conv_layers": "model.conv_layers",
    "channels": "model.channels",
    "input_size": "model.input_size",
    "fc_hidden": "model.fc_hidden",
    "hidden": "model.hidden",
    "steps": "model.steps",
}
TRAIN_FLAGS = {
    "lr": "train.lr",
    "momentum": "train.momentum",
    "batch_size": "train.batch_size",
    "epochs": "train.epochs",
    "lr_decay": "train.lr_decay",
    "patience": "train.patience",
    "max_decays": "train.max_decays",
}
RUN_FLAGS = {"seed": "seed", "device": "device"}
FLOAT_FLAGS = {"lr", "momentum", "lr_decay"}


def add_spec_arguments(parser: argparse.ArgumentParser, training: bool = True) -> None:
    """The spec file, the model flags, seed and device, and (with `training`) the
    training flags."""
    parser.add_argument("spec", nargs="?", help="JSON spec file ('-' for stdin)")
    model = parser.add_argument_group("model (override the spec file)")
    model.add_argument("--model", choices=MODEL_KINDS, help="model kind")
    for dest in MODEL_FLAGS:
        model.add_argument("--" + dest.replace("_", "-"), dest=dest, type=int)
    parser.add_argument("--seed", type=int, help="seeds data, initialization, shuffling")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:i")
    if training:
        train = parser.add_argument_group("training (override the spec file)")
        for dest in TRAIN_FLAGS:
            kind = float if dest in FLOAT_FLAGS else int
            train.add_argument("--" + dest.replace("_", "-"), dest=dest, type=kind)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def spec_document(args: argparse.Namespace, extra_flags: dict[str, str]) -> dict[str, object]:
    """The spec file's JSON (or {}) with every given flag written over it."""
    document: dict[str, object] = load_json_file(args.spec) if args.spec else {}
    if args.model is not None:
        current = document.get("model")
        if not isinstance(current, dict) or current.get("kind") != args.model:
            document["model"] = {"kind": args.model}
    elif "model" not in document:
        fail("no model given: pass SPEC.json or --model {" + ",".join(MODEL_KINDS) + "}")
    for dest, path in (MODEL_FLAGS | TRAIN_FLAGS | RUN_FLAGS | extra_flags).items():
        value = getattr(args, dest, None)
        if value is not None:
            set_path(document, path, value)
    return document


def check_device(name: str) -> None:
    """A UsageError when the device does not exist here (imports torch)."""
    from capacity_service.science.device import DeviceUnavailableError, resolve_device

    try:
        resolve_device(name)
    except DeviceUnavailableError as error:
        fail(f"device: {error}")


def describe_model(model: FCDNNSpec | CNNSpec | RNNSpec) -> str:
    """e.g. fcdnn(width=32, depth=1, n_in=None)."""
    fields = model.model_dump(exclude={"kind"})
    return f"{model.kind}(" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")"


class ProgressBar:
    """Training progress on stderr: redrawn in place on a terminal, a line every few
    seconds otherwise (so CI logs stay short)."""

    WIDTH = 24

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.interval = 0.1 if self.interactive else interval
        self.last = 0.0
        self.prefix = ""

    def update(self, done: int, total: int, text: str) -> None:
        now = time.monotonic()
        if now - self.last < self.interval and done < total:
            return
        self.last = now
        filled = round(self.WIDTH * done / max(total, 1))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = f"{self.prefix}[{bar}] {text}"
        if self.interactive:
            self.stream.write("\r" + line[:150].ljust(150))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def on_epoch(self, p: EpochProgress) -> None:
        self.update(
            p.epoch,
            p.epochs,
            f"epoch {p.epoch}/{p.epochs} loss {p.loss:.4f} acc {p.accuracy:.4f} "
            f"best {p.best_accuracy:.4f} lr {p.lr:.2g}",
        )

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def print_table(rows: list[tuple[str, str]], stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.write(f"{key.ljust(width)}  {value}\n")
