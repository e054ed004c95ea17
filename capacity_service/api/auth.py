"""API keys as bearer tokens: writes always need one, reads when the settings say so.

The key itself is never logged or stored; the store keeps its SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from capacity_service.api.deps import settings_of, store_of
from capacity_service.api.problems import FORBIDDEN, UNAUTHORIZED, ProblemError
from capacity_service.store.queries import Store
from capacity_service.store.records import ApiKey

KEY_PREFIX = "cap_"


def hash_key(secret: str) -> str:
    """SHA-256 of the key: keys are 256 random bits, so a salt or a slow hash adds nothing."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(store: Store, name: str) -> tuple[ApiKey, str]:
    """A new key: its record and the secret, which is shown once and stored only as a
    hash."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return store.add_api_key(name, hash_key(secret)), secret


class KeyCache:
    """Valid keys remembered for `seconds` (by hash), so a burst of writes costs one
    lookup; a revocation is refused everywhere within `seconds`. 0 turns it off."""

    LARGEST = 10_000  # entries; then it starts over (keys are few, this bounds a flood)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._valid: dict[str, tuple[ApiKey, float]] = {}
        self._lock = threading.Lock()

    def lookup(self, store: Store, secret: str) -> ApiKey | None:
        digest = hash_key(secret)
        now = time.monotonic()
        hit = self._valid.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        key = store.find_api_key(digest)
        if key is not None and not key.revoked and self.seconds > 0:
            with self._lock:
                if len(self._valid) >= self.LARGEST:
                    self._valid.clear()
                self._valid[digest] = (key, now + self.seconds)
        return key


def key_cache_of(request: Request) -> KeyCache:
    cache: KeyCache = request.app.state.key_cache
    return cache


bearer = HTTPBearer(auto_error=False, description="an API key from `capacity keys create`")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="capacity"'}


def _authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    if credentials is None or not credentials.credentials:
        raise ProblemError(
            401, "API key missing",
            "send an API key as 'Authorization: Bearer <key>'; create one with "
            "`capacity keys create --name NAME`",
            type=UNAUTHORIZED, headers=CHALLENGE,
        )  # fmt: skip
    key = key_cache_of(request).lookup(store_of(request), credentials.credentials)
    if key is None:
        raise ProblemError(
            401, "API key unknown",
            "this API key is not known here; check it, or create one with "
            "`capacity keys create --name NAME`",
            type=UNAUTHORIZED, headers=CHALLENGE,
        )  # fmt: skip
    if key.revoked:
        raise ProblemError(
            403, "API key revoked",
            f"the key named {key.name!r} was revoked; ask for a new key",
            type=FORBIDDEN,
        )  # fmt: skip
    return key


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_writer(request: Request, credentials: Credentials) -> ApiKey:
    """Dependency of every route that changes something."""
    return _authenticate(request, credentials)


WRITER = [Depends(require_writer)]  # `dependencies=` of a route that changes something


def require_reader(request: Request, credentials: Credentials) -> ApiKey | None:
    """Dependency of every read: open unless `read_requires_key` is set."""
    if not settings_of(request).read_requires_key:
        return None
    return _authenticate(request, credentials)


READER = [Depends(require_reader)]  # `dependencies=` of a route that reads
