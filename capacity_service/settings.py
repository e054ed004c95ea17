"""Configuration: environment variables with the CAPACITY_ prefix, read once."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPACITY_", extra="ignore")

    database_url: str = "sqlite:///./capacity.db"
    # log lines of the CLI, the worker and the API server: text, or one JSON object each
    log_format: Literal["text", "json"] = "text"

    # workers
    lease_seconds: float = 60.0  # a running job whose lease is this old goes back to queued
    heartbeat_seconds: float = 10.0  # how often a worker renews its lease
    max_attempts: int = 3  # claims of one job before it fails
    poll_seconds: float = 1.0  # a worker's wait when the queue is empty
    # a transiently failed attempt goes back to the queue after base, 2 base, 4 base, ...
    retry_base_seconds: float = Field(10.0, ge=0, description="first retry's backoff")
    retry_max_seconds: float = Field(600.0, ge=0, description="longest retry backoff")
    # how often a sweep that waits for its capacity job looks again
    dependency_poll_seconds: float = Field(15.0, ge=0, description="dependency re-check")

    # the API server
    host: str = "127.0.0.1"
    port: int = 8000
    read_requires_key: bool = False  # True: GET endpoints need an API key as writes do
    key_cache_seconds: float = 5.0  # a valid key is looked up once per this; revocation lag
    db_pool_size: int = Field(20, ge=1, description="database connections per API process")

    # limits on what one submitted job may ask for (HTTP 422 names the one exceeded)
    max_n: int = Field(1_000_000, ge=2, description="samples N a job may train on")
    max_params: int = Field(10_000_000, ge=1, description="effective parameters of a model")
    max_trials: int = Field(1_000, ge=1, description="trainings of one job")
    max_seconds: float = Field(86_400.0, gt=0, description="wall-clock budget of a search")
    max_body_bytes: int = Field(65_536, ge=1_024, description="size of a request body")

    # the HTTP client of `capacity submit/jobs/job/cancel --api`
    api_url: str | None = None
    api_key: str | None = None
