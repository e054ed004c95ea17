"""Submit latency and throughput of the REST API under concurrent clients.

A `capacity serve` process (uvicorn) on a fresh database; asyncio clients on loopback
(keep-alive HTTP/1.1 connections) POST /v1/jobs (a small valid capacity job, with an
API key). Two kinds of run:

- closed loop: C clients each send their next request when the last one answered, for
  --seconds (at most --max-requests): the most the server takes;
- open loop: requests start at a fixed --rate, spread over C connections, whatever the
  answers do: the latency a service sees at that load (late starts count as latency).

    .venv/bin/python benchmarks/api_load.py                      # SQLite and PostgreSQL
    .venv/bin/python benchmarks/api_load.py --backends postgres --clients 200 --rate 200
    .venv/bin/python benchmarks/api_load.py --json > now.json; ... --baseline now.json

The load generator shares this machine's cores with the server: figures are lower bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from capacity_service.api.auth import new_key
from capacity_service.store.migrate import upgrade
from capacity_service.store.queries import Store

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
JOB = {"kind": "capacity", "spec": {"model": {"kind": "fcdnn", "width": 32},
                                    "search": {"budget_trials": 20}}}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Database:
    """A fresh database of one backend, dropped (PostgreSQL) or deleted (SQLite) after."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        if backend == "sqlite":
            self._folder = tempfile.TemporaryDirectory()
            self.url = f"sqlite:///{Path(self._folder.name) / 'load.db'}"
        else:
            self._admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            self._name = f"capacity_load_{uuid.uuid4().hex[:8]}"
            with self._admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{self._name}"'))
            self.url = (
                make_url(ADMIN).set(database=self._name).render_as_string(hide_password=False)
            )
        upgrade(self.url)

    def close(self) -> None:
        if self.backend == "sqlite":
            self._folder.cleanup()
            return
        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)'))
        self._admin.dispose()


def start_server(url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {"CAPACITY_DATABASE_URL": url}
    process = subprocess.Popen(
        [sys.executable, "-m", "capacity_service.cli", "serve", "--port", str(port),
         "--workers", str(workers), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the API server did not start")


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for this load: a
    request out, the status and Content-Length body back. httpx's async pool spends more
    CPU per request than the server does at 50+ connections, which would measure the
    client, not the API."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def submit_request(base: str, key: str) -> tuple[str, int, bytes]:
    url = httpx.URL(base)
    body = json.dumps(JOB).encode()
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return str(url.host), int(url.port or 80), head.encode() + body


async def timed(connection: Connection, start: float) -> float | None:
    """Seconds from `start` to the answer, or None for an error."""
    try:
        status = await connection.post()
    except (OSError, asyncio.IncompleteReadError, ValueError):
        await connection.close()
        return None
    return time.perf_counter() - start if status == 201 else None


async def closed_loop(
    base: str, key: str, clients: int, seconds: float, max_requests: int
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    host, port, request = submit_request(base, key)
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        connection = Connection(host, port, request)
        while time.perf_counter() < stop_at and len(latencies) + errors < max_requests:
            took = await timed(connection, time.perf_counter())
            if took is None:
                errors += 1
            else:
                latencies.append(took)
        await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - started


async def open_loop(
    base: str, key: str, clients: int, rate: float, seconds: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    host, port, request = submit_request(base, key)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(clients):
        idle.put_nowait(Connection(host, port, request))
    started = time.perf_counter()

    async def one(due: float) -> None:
        nonlocal errors
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        connection = await idle.get()  # all busy: the request waits, and that counts
        took = await timed(connection, due)
        idle.put_nowait(connection)
        if took is None:
            errors += 1
        else:
            latencies.append(took)

    count = int(rate * seconds)
    await asyncio.gather(*(one(started + i / rate) for i in range(count)))
    while not idle.empty():
        await idle.get_nowait().close()
    return latencies, errors, time.perf_counter() - started


def summary(kind: str, backend: str, clients: int, latencies: list[float], errors: int,
            wall: float, rate: float | None = None) -> dict[str, Any]:  # fmt: skip
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    return {
        "run": kind, "backend": backend, "clients": clients, "target_rps": rate,
        "requests": len(latencies), "errors": errors,
        "rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(ordered) * 1000 if ordered else 0.0,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--clients", default="50,200", help="closed-loop client counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per closed run")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s (0: none)")
    parser.add_argument("--open-clients", type=int, default=200, help="connections, open loop")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    parser.add_argument("--baseline", help="a --json output to compare with")
    args = parser.parse_args()
    baseline: dict[tuple[str, str, int], dict[str, Any]] = {}
    if args.baseline:
        for row in map(json.loads, Path(args.baseline).read_text().splitlines()):
            baseline[(row["run"], row["backend"], row["clients"])] = row
    if not args.json:
        print(f"{'run':<7} {'backend':<9} {'clients':>7} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'errors':>6}  baseline p99")  # fmt: skip
    for backend in args.backends.split(","):
        database = Database(backend)
        store = Store(database.url)
        _, key = new_key(store, "load")
        store.close()
        process, base = start_server(database.url, args.workers)
        try:
            runs = [("closed", int(c), None) for c in args.clients.split(",")]
            if args.rate > 0:
                runs.append(("open", args.open_clients, args.rate))
            for kind, clients, rate in runs:
                if kind == "closed":
                    measured = asyncio.run(closed_loop(base, key, clients, args.seconds,
                                                       args.max_requests))  # fmt: skip
                else:
                    assert rate is not None
                    measured = asyncio.run(open_loop(base, key, clients, rate, args.seconds))
                row = summary(kind, backend, clients, *measured, rate=rate)
                if args.json:
                    print(json.dumps(row), flush=True)
                    continue
                label = kind if rate is None else f"{kind}@{rate:.0f}"
                before = baseline.get((kind, backend, clients))
                compared = (
                    ""
                    if before is None
                    else (f"  {before['p99_ms']:.1f} ({row['p99_ms'] / before['p99_ms'] - 1:+.0%})")
                )
                print(f"{label:<7} {backend:<9} {clients:>7} {row['rps']:>8.1f} "
                      f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['errors']:>6}"
                      f"{compared}", flush=True)  # fmt: skip
        finally:
            process.terminate()
            process.wait(timeout=10)
            database.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
