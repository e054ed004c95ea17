"""The FastAPI application. `create_app(settings)` builds it; nothing connects before the
first request, and neither torch nor the science package is imported."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capacity_service import __version__
from capacity_service.api.auth import KeyCache
from capacity_service.api.metrics import ApiMetrics, RequestMetrics
from capacity_service.api.metrics import router as metrics_router
from capacity_service.api.problems import MEDIA_TYPE, TOO_LARGE, Problem, install_handlers
from capacity_service.api.routes import dashboard, health, jobs, results
from capacity_service.settings import Settings
from capacity_service.store.queries import Store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.store.close()

    app = FastAPI(
        title="capacity service",
        version=__version__,
        summary="Memorization capacity of neural networks and its erosion by quantization.",
        description="Submit capacity and quantization-sweep jobs, follow them, read their "
        "results. Errors are application/problem+json (RFC 9457). Writes need an API key "
        "(`Authorization: Bearer <key>`, from `capacity keys create`).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # an engine: it connects on first use
    app.state.store = Store(settings.database_url, pool_size=settings.db_pool_size)
    app.state.key_cache = KeyCache(settings.key_cache_seconds)
    app.state.metrics = ApiMetrics(app.state.store)
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(results.router)
    app.include_router(dashboard.router)
    app.include_router(metrics_router)  # GET /metrics, outside the OpenAPI schema

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    if not settings.read_requires_key:
        _document_open_reads(app)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # outermost: requests refused by the body limit are counted too
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def _document_open_reads(app: FastAPI) -> None:
    """Mark the key optional on reads in the OpenAPI document: they accept no key unless
    `read_requires_key` is set (the dependency is the same either way)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema["paths"].values():
                read = path.get("get")
                if read is not None and "security" in read:
                    read["security"] = [{}, *read["security"]]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in; an HTTPException, so FastAPI's body reading
    passes it on to the problem handler instead of answering 400."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length when it is sent
    and by counting the bytes as they arrive when it is not (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(scope, send, 400, "Content-Length is not a number")
                return
            if size > self.max_bytes:
                await self._refuse(scope, send, 413, self._too_large(size))
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self._too_large(received))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as error:  # raised outside a route (no handler saw it)
            if not started:
                await self._refuse(scope, send, 413, str(error.detail))

    def _too_large(self, size: int) -> str:
        return (f"the request body has {size:,} bytes, over the limit of {self.max_bytes:,} "
                "(setting CAPACITY_MAX_BODY_BYTES); send a smaller spec")  # fmt: skip

    async def _refuse(self, scope: Scope, send: Send, status: int, detail: str) -> None:
        problem = Problem(
            type=TOO_LARGE if status == 413 else "about:blank",
            title="Request body too large" if status == 413 else "Malformed request",
            status=status,
            detail=detail,
            instance=scope.get("path"),
        )
        body = json.dumps(problem.model_dump(exclude_none=True)).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
