"""Independent random streams derived from one user seed."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for `stream` (e.g. "data", "init"), stable across runs and machines,
    so that the data, the initialization and the shuffling never share a stream."""
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
