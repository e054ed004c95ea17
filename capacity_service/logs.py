"""Log lines as text (the default) or as one JSON object per line (`CAPACITY_LOG_FORMAT`).

A JSON line has `time` (UTC, ISO 8601), `level`, `logger`, `message`, `exception` (the
traceback) when there is one, and every field the call passed in `extra=`, e.g. `job_id`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# a LogRecord's own attributes; anything else on a record came from `extra=`
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args  # as uvicorn logs them
            document |= {"client": client, "method": method, "path": path, "status": status}
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in document:
                document[key] = value
        return json.dumps(document, default=str, ensure_ascii=False)


def configure_logging(format: LogFormat, level: int) -> None:
    """Log to stderr in `format` at `level` (like logging.basicConfig: nothing changes when
    the root logger has handlers already). JSON also routes Python warnings through the
    log, so that every line on stderr is an object."""
    if format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
        logging.captureWarnings(True)
    else:
        logging.basicConfig(level=level, format=TEXT_FORMAT)


def uvicorn_log_config(format: LogFormat, root_level: int) -> dict[str, Any] | None:
    """uvicorn's `log_config` for `format`: None keeps uvicorn's own (text). For JSON its
    loggers (errors on stderr, access on stdout, as uvicorn does) and the root logger (the
    app's, in every server process) write JSON lines."""
    if format != "json":
        return None
    stream = {"class": "logging.StreamHandler", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "default": stream | {"stream": "ext://sys.stderr"},
            "access": stream | {"stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": logging.getLevelName(root_level)},
    }
