"""What every `capacity` subcommand shares: spec loading, error messages, progress."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

from pydantic import BaseModel, ValidationError

from capacity_service.specs import MODEL_KINDS

EXIT_BAD_INPUT = 2
M = TypeVar("M", bound=BaseModel)


class UsageError(Exception):
    """Bad input from the user: printed as one message, exit code 2, nothing run."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)


def load_json_file(path: str) -> dict[str, Any]:
    """The JSON object in `path` (`-` reads standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        fail(f"{path}: cannot read the spec file ({error.strerror})")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        fail(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}")
    if not isinstance(document, dict):
        fail(f"{path}: the spec must be a JSON object, got {type(document).__name__}")
    return document


def validate(model: type[M], document: dict[str, Any], source: str) -> M:
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
        where = ".".join(loc) or "(spec)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field; remove it (check the spelling and the model kind)"
        given = problem.get("input")
        suffix = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        lines.append(f"  {where}: {message}{suffix}")
    return "\n".join(lines)


def set_path(document: dict[str, Any], dotted: str, value: Any) -> None:
    """document["a"]["b"] = value for dotted = "a.b", creating objects on the way."""
    *parents, leaf = dotted.split(".")
    node = document
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            fail(f"{key}: must be a JSON object to set {dotted}")
        node = child
    node[leaf] = value


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

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def print_table(rows: list[tuple[str, str]], stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        out.write(f"{key.ljust(width)}  {value}\n")
