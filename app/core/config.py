"""Settings, read once from the environment (prefix ``KJ_``) and validated at start-up.

With nothing set, everything lives under ``KJ_HOME`` (default ``~/.keras-jobs``): a SQLite
database, a SQLite-backed broker in its own file and a local artifact folder. Setting
``KJ_DATABASE_URL`` / ``KJ_BROKER_URL`` / ``KJ_ARTIFACT_ROOT`` switches to PostgreSQL, Redis and
a shared volume (what docker-compose.yml does).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KJ_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".keras-jobs")
    database_url: str = ""
    broker_url: str = ""
    artifact_root: Path | None = None

    # Longest a job may run before Redis redelivers its unacked message; must exceed every job.
    visibility_timeout_s: int = 7 * 24 * 3600
    # How often a running job looks at its cancel flag in the database.
    cancel_poll_s: float = 0.5
    # After a cancel request, how long a job gets to stop on its own before its process is ended.
    cancel_grace_s: float = 30.0
    # A running job's process writes a heartbeat this often; one silent for stale_after_s is
    # taken as dead and its job queued again (at worker start, or by a redelivered message).
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0
    # How often each worker looks for such orphaned jobs (besides once at start-up).
    sweep_s: float = 30.0
    max_upload_bytes: int = 4 * 1024**3
    # Fit jobs whose arrays are larger than this stream batches from the memory-mapped arrays
    # (tf.data) instead of loading them (job option input="auto").
    stream_threshold_bytes: int = 1024**3
    model_cache_size: int = 8
    # Celery queue that training jobs go to (long tasks on their own queue).
    queue: str = "training"
    log_level: str = "INFO"

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'keras-jobs.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def resolved_artifact_root(self) -> Path:
        return (self.artifact_root or self.home / "artifacts").expanduser()

    @property
    def embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("sqla+")

    def ensure_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.resolved_artifact_root.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
