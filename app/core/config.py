"""Settings, read once from the environment (prefix ``KJ_``) and validated at start-up.

With nothing set, everything lives under ``KJ_HOME`` (default ``~/.keras-jobs``): a SQLite
database, a SQLite-backed broker in its own file and a local artifact folder. Setting
``KJ_DATABASE_URL`` / ``KJ_BROKER_URL`` / ``KJ_ARTIFACT_ROOT`` switches to PostgreSQL, Redis and
a shared volume (what docker-compose.yml does).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

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
    # How often each worker looks for such orphaned jobs (besides once at start-up), and for
    # queued jobs whose message the broker lost (sent again within about this long).
    sweep_s: float = 10.0
    # The same sweep sends a queued job's message again when a consumer took it longer ago
    # than this and never claimed the job (a worker that died holding it), or, where the
    # broker cannot be looked into, when it was sent longer ago than this. Above the longest
    # wait of a message a live worker holds (a database retry: 60 s).
    redispatch_after_s: float = 120.0
    # A job whose tenant already runs its quota of jobs (KJ_QUOTA_RUNNING_JOBS) stays queued; its
    # message comes back this often until a slot is free.
    tenant_busy_retry_s: float = 10.0
    # Staging folders (an upload in progress, a version being saved) untouched for this long
    # belong to a process that was killed; the API removes them at start-up.
    staging_max_age_s: float = 3600.0
    # `keras-jobs serve` and each API process upgrade the schema at start-up. Off where one
    # `keras-jobs migrate` runs before them (compose's one-shot `migrate` service), so that
    # replicas do not race each other to migrate.
    migrate_on_start: bool = True
    max_upload_bytes: int = 4 * 1024**3
    # A CSV upload with more columns than this is refused (422) before it is parsed: each
    # column becomes an array file of its own.
    max_csv_columns: int = 2048
    # Members of an uploaded archive (.npz dataset, .keras model); more is a 422, told from the
    # archive's last bytes before its central directory is parsed.
    max_archive_members: int = Field(1024, ge=1)
    # An archive's members (and each member) may inflate to at most this many times the bytes
    # they take in it (413 past it), once they add up to more than archive_ratio_floor_bytes.
    # Honest np.savez_compressed data stays far below: random floats ~1.1:1, int labels ~11:1,
    # one-hot float labels of 10 classes ~36:1, 99 %-zero floats ~57:1; deflate's limit (what
    # bombs use) is ~1030:1. np.savez and model.save store members (1:1). The total's ratio
    # bounds what an archive writes at max_archive_ratio x its upload (+ the floor), however
    # many small members it has.
    max_archive_ratio: float = Field(100.0, ge=1.0)
    archive_ratio_floor_bytes: int = Field(4 * 1024**2, ge=0)
    # A `.keras` file's assets/ members (vocabularies of StringLookup, TextVectorization...):
    # loading unpacks them to disk, so their count and uncompressed total are bounded (413).
    max_keras_assets: int = Field(256, ge=0)
    max_keras_assets_bytes: int = Field(64 * 1024**2, ge=0)
    # Fit jobs whose arrays are larger than this stream batches from the memory-mapped arrays
    # (tf.data) instead of loading them (job option input="auto").
    stream_threshold_bytes: int = 1024**3
    # Loaded models per API process, bounded by count and by their weights' memory.
    model_cache_size: int = 8
    model_cache_bytes: int = 2 * 1024**3
    # Dynamic batching of predict requests (per loaded version; bench/predict.py measures them):
    # at most batch_max_size rows per model call, waiting at most batch_timeout_ms for company;
    # batches are padded to powers of two up to batch_max_size. Past batch_queue_rows queued
    # rows (0: 256 batches), requests are refused with 503 and Retry-After.
    batch_max_size: int = 64
    batch_timeout_ms: float = 2.0
    batch_queue_rows: int = 0
    batch_threads: int = 1
    # What a job's process logs is kept with the job, at most this much (the newest part).
    job_log_bytes: int = 1024**2
    # Largest predict body (JSON or .npy/.npz); larger is a 413.
    predict_max_body_bytes: int = 64 * 1024**2
    # At start-up, each API process loads the labelled and latest versions of the models
    # served in the last preload_days days, before /readyz says ready.
    preload_days: float = 7.0
    # Longest wait for a new database connection (TCP connect plus the server's greeting), so a
    # database that never answers fails the request with a 503 instead of holding a thread.
    # Whole seconds, at least 2 (libpq's connect_timeout rules). A live server greets in
    # milliseconds; with the ping below, a request on a frozen database fails within ~3 s.
    db_connect_timeout_s: int = Field(2, ge=2)
    # The pool's check of a pooled connection before a request uses it (and /readyz's probe of
    # the database): a peer silent this long is taken as gone.
    db_ping_timeout_s: float = Field(1.0, gt=0)
    # On the API's request path, the longest one wait for PostgreSQL's answer (a statement, a
    # lock, a commit) before the request is a 503: with the ping and a connection, a request
    # on a frozen database answers within 5 s. (db_statement_timeout_s bounds the rest.)
    db_request_wait_s: float = Field(3.0, gt=0)
    # PostgreSQL cancels a statement running longer than this (and SQLite gives up waiting for
    # a lock); the client also gives up on a connection that has not answered this long plus a
    # second, which covers a peer that went silent (statement_timeout needs a live server).
    db_statement_timeout_s: float = 30.0
    # Longest wait for a free connection in the pool before the request fails with a 503.
    db_pool_timeout_s: float = 5.0
    # How long an Idempotency-Key's first answer is kept for replay (older ones are ignored).
    idempotency_ttl_s: float = 24 * 3600
    # Celery queue that training jobs go to (long tasks on their own queue).
    queue: str = "training"
    log_level: str = "INFO"
    # "json": every log line is a JSON object (time, level, logger, message, request_id and
    # job_id when known); "text": the plain format.
    log_format: Literal["text", "json"] = "text"
    # `keras-jobs worker` serves its Prometheus metrics (job and epoch durations) on this port;
    # 0: off. `--metrics-port` sets it too.
    worker_metrics_port: int = Field(0, ge=0, le=65535)

    # --- authentication, tenants, quotas and limits (SECURITY.md) ---
    # "auto": open (one tenant, "local") only while the service is bound to a loopback address
    # and no API key was ever created; keys are required otherwise. "required": always.
    # "off": never (refused at start-up on a non-loopback address).
    auth: Literal["auto", "required", "off"] = "auto"
    # The address `keras-jobs serve` bound to (it sets this for its API processes). Unset, "auto"
    # looks at the local address each connection arrived on instead.
    bind_host: str = ""
    # Keys are stored as HMAC-SHA256(pepper, key): with a pepper set here (and not in the
    # database), a database dump alone cannot even confirm a guessed key. Unset: a pepper
    # generated on first start and kept in $KJ_HOME/key-pepper (0600), shared by every process
    # of that home (app/auth/keys.py; a home with older keys keeps the built-in one, warned).
    key_pepper: str = ""
    # Per-tenant quotas (an admin overrides them per tenant: PUT /v1/tenants/{tenant}/quotas).
    # Largest upload is max_upload_bytes above.
    quota_running_jobs: int = Field(4, ge=0)
    quota_queued_jobs: int = Field(100, ge=0)
    quota_stored_bytes: int = Field(100 * 1024**3, ge=0)
    # Per request: largest JSON body of any other route (uploads and predict have their own).
    max_json_body_bytes: int = Field(8 * 1024**2, ge=1024)
    # A fit job's epochs x training rows (a bound on the GPU time one request can ask for).
    max_fit_epoch_rows: int = Field(10**10, ge=1)
    # Rows of one predict request (a larger one is a 413: use a batch prediction job).
    max_predict_rows: int = Field(65_536, ge=1)
    # A model spec (POST /v1/specs) and a `.keras` upload's config (app/specs/limits.py): its
    # layers and parameters (422, both counted before any weight is allocated), and the spec's
    # compact JSON size (413).
    max_spec_layers: int = Field(1000, ge=1)
    max_spec_params: int = Field(100_000_000, ge=1)
    max_spec_bytes: int = Field(1024**2, ge=1024)
    # What a model's layers output per row of input (app/specs/activations.py), estimated from
    # their shapes at spec creation, import and `.keras` upload (422 past either) and again
    # when a stored version is loaded to serve: one layer's outputs (a weightless
    # RepeatVector(20_000_000) is 80 MB a row) and all of them together (ResNet50: 142 MiB).
    max_layer_output_bytes_per_row: int = Field(64 * 1024**2, ge=1024)
    max_activation_bytes_per_row: int = Field(512 * 1024**2, ge=1024)
    # One served version's traced batch may take this much activation memory: its largest
    # batch is at most this // its activation bytes per row (and at least 1), and warm-up
    # traces only the batch sizes up to that.
    serving_memory_per_version_bytes: int = Field(1024**3, ge=1024)
    # Requests per key per minute on predict routes and on writes (POST/PUT/PATCH/DELETE),
    # counted in Redis when it is the broker (shared by every API process), else per process.
    # 0: no limit.
    rate_limit_predict_per_min: int = Field(300_000, ge=0)
    rate_limit_writes_per_min: int = Field(600, ge=0)

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
