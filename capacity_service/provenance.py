"""Where a result was computed: the package version and git commit, the versions of
torch, numpy and scikit-optimize, the device's name and the thread count.

Nothing here imports torch: the API process has none. torch is asked only when this
process has already loaded it (a worker or a local run), and nothing here ever raises.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from capacity_service import __version__
from capacity_service.specs import Provenance

PACKAGE_DIR = Path(__file__).resolve().parent
FIELDS = tuple(Provenance.model_fields)
R = TypeVar("R", bound=BaseModel)


def provenance(device: str) -> Provenance:
    """This process's provenance for a result computed on `device` (cpu, cuda[:i])."""
    torch = sys.modules.get("torch")  # loaded by the run itself, or not at all
    return Provenance(
        package_version=__version__,
        git_commit=git_commit(),
        torch=installed("torch"),
        numpy=installed("numpy"),
        scikit_optimize=installed("scikit-optimize"),
        device_name=_device_name(device, torch),
        threads=_threads(torch),
    )


@functools.cache
def git_commit() -> str | None:
    """HEAD of the checkout this package runs from; None when it is not one (an installed
    wheel, even one inside some other repository) or git is missing or fails."""
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = answer.stdout.split()
    if answer.returncode != 0 or len(lines) != 2:
        return None
    top, commit = lines
    if Path(top).resolve() / PACKAGE_DIR.name != PACKAGE_DIR:  # a repository around a wheel
        return None
    return commit


@functools.cache
def installed(distribution: str) -> str | None:
    """The installed version of `distribution` (without importing it), None if absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _device_name(device: str, torch: Any) -> str:
    if device.startswith("cuda") and torch is not None:
        try:
            return str(torch.cuda.get_device_name(device))
        except Exception:  # provenance is a record: it never fails a run
            pass
    return cpu_model()


@functools.cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _threads(torch: Any) -> int:
    if torch is not None:
        try:
            return int(torch.get_num_threads())
        except Exception:  # likewise
            pass
    return os.cpu_count() or 1


# A provenance as a suite's report keeps it: a field's value, or the distinct values of
# results that disagree joined by ', '
ProvenanceFields = dict[str, str | int | None]


def merged(found: list[Provenance | None]) -> ProvenanceFields | None:
    """One provenance for the results of a suite: each field's value where they agree,
    else the distinct values joined by ', ' (jobs that ran on several workers); None
    when no result has one (results from before provenance was recorded)."""
    known = [p for p in found if p is not None]
    if not known:
        return None
    out: ProvenanceFields = {}
    for field in FIELDS:
        values = list(dict.fromkeys(getattr(p, field) for p in known))
        shown = ("-" if value is None else str(value) for value in values)
        out[field] = values[0] if len(values) == 1 else ", ".join(shown)
    return out


def table(baseline: ProvenanceFields | None, now: ProvenanceFields | None) -> list[list[str]]:
    """Rows field | baseline | now (a header row first); '-' where a side has none."""

    def show(document: ProvenanceFields | None, field: str) -> str:
        value = (document or {}).get(field)
        return "-" if value is None else str(value)

    rows = [["provenance", "baseline", "now"]]
    rows += [[field, show(baseline, field), show(now, field)] for field in FIELDS]
    return rows


def stamped(result: R) -> R:
    """`result` with this process's provenance for the device it ran on (a result model
    without `provenance` and `device` fields is returned as it is)."""
    fields = type(result).model_fields
    if "provenance" not in fields or "device" not in fields:
        return result
    device = str(getattr(result, "device"))  # noqa: B009 (any result model with a device)
    return result.model_copy(update={"provenance": provenance(device)})


def summary(record: Provenance) -> str:
    """One line for a printed result."""
    commit = f" ({record.git_commit[:12]})" if record.git_commit else ""
    return (
        f"capacity_service {record.package_version}{commit}, torch {record.torch or '-'}, "
        f"{record.device_name}, {record.threads} threads"
    )
