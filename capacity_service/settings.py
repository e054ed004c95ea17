"""Configuration: environment variables with the CAPACITY_ prefix, read once."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPACITY_", extra="ignore")

    database_url: str = "sqlite:///./capacity.db"
    lease_seconds: float = 60.0  # a running job whose lease is this old goes back to queued
    heartbeat_seconds: float = 10.0  # how often a worker renews its lease
    max_attempts: int = 3  # claims of one job before it fails
    poll_seconds: float = 1.0  # a worker's wait when the queue is empty
