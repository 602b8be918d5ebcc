from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from app.core.errors import DomainError
from app.registry.schemas import MAX_VERSION, MODEL_NAME_PATTERN, MODEL_REF_PATTERN
from app.tables import JobStatus, JobType

ARRAY_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$"

# Which dataset arrays feed the model: one array, several 1-D/2-D arrays stacked as columns
# (e.g. CSV columns), or a mapping from model input/output name to either of those.
ArrayName = Annotated[str, Field(pattern=ARRAY_NAME_PATTERN)]
ArraySelector = ArrayName | list[ArrayName] | dict[str, ArrayName | list[ArrayName]]

# Limits every job type takes (the worker enforces them; app.training.runner, app.jobs.state).
MaxRuntime = Annotated[float | None, Field(
    gt=0, le=365 * 24 * 3600, description="Fail the job once it has run this many seconds "
    "(all its attempts together); nothing is saved.")]
MaxAttempts = Annotated[int, Field(
    ge=1, le=100, description="Fail the job once this many of its attempts died (worker "
    "killed, host lost); a worker's shutdown hands it back without counting.")]

# Job requests are strict: `"epochs": true` or `"batch_size": "32"` is a 422, not one epoch or a
# silent conversion; NaN and ±Infinity (which Python's json reads, and PostgreSQL's json type
# refuses to store) are 422s at their field.
STRICT_REQUEST = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
MAX_STEPS = 2**31 - 1


def _version_in_range(ref: str) -> str:
    """'name/N' with N within the version column (a 32-bit integer): a larger N would reach
    the database as an out-of-range parameter."""
    _, _, version = ref.partition("/")
    if version and (len(version) > len(str(MAX_VERSION)) or int(version) > MAX_VERSION):
        raise ValueError(f"version {version} is out of range (versions are 1..{MAX_VERSION})")
    return ref


# A saved version: 'name' (latest) or 'name/3'.
ModelRef = Annotated[str, Field(pattern=MODEL_REF_PATTERN), AfterValidator(_version_in_range)]


class CallbackSpec(BaseModel):
    """A Keras callback by name with its arguments, e.g.
    {"type": "EarlyStopping", "monitor": "val_loss", "patience": 3, "restore_best_weights": true}.
    EarlyStopping, ReduceLROnPlateau and TerminateOnNaN run as Keras's own;
    LearningRateScheduler takes a built-in schedule ({"class_name": "ExponentialDecay",
    "config": {...}}); ModelCheckpoint with save_best_only is keep_best; CSVLogger writes to
    the job's log; BackupAndRestore is what every job does already (app.jobs.callback_specs).
    """

    model_config = ConfigDict(extra="allow", strict=True)

    type: str


class KeepBestOptions(BaseModel):
    """Save the weights of the best epoch by `monitor` instead of the last epoch's, as
    ModelCheckpoint(save_best_only=True) picks it."""

    model_config = STRICT_REQUEST

    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="'auto' asks the metric whether it is maximised (accuracy, AUC, "
        "F1Score, R2Score, IoU, ...) or minimised (losses, errors), as Keras's callbacks do.")
    initial_value_threshold: float | None = Field(
        None, description="An epoch is kept only if it beats this value.")


class FitJobCreate(BaseModel):
    model_config = STRICT_REQUEST

    type: Literal["fit"]
    spec_id: str | None = Field(None, description="Train this spec from scratch (or give "
                                "from_model).")
    from_model: ModelRef | None = Field(None, description="Fine-tune a saved version: 'name' "
                                        "(latest) or 'name/3'; its optimizer state comes "
                                        "along.")
    dataset_id: str
    x: ArraySelector = "x"
    y: ArraySelector = "y"
    sample_weight: ArrayName | None = None
    class_weight: dict[str, float] | None = Field(
        None, description="Class index (as a string) → weight; single-output models.")
    epochs: int = Field(1, ge=1, le=100_000)
    initial_epoch: int = Field(0, ge=0, le=100_000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    steps_per_epoch: int | None = Field(None, ge=1, le=MAX_STEPS)
    validation_split: float | None = Field(
        None, gt=0, lt=1, description="Hold out the last rows, as Keras's model.fit does: "
        "rows floor(n * (1 - validation_split)) and on, before any shuffling.")
    validation_split_shuffled: float | None = Field(
        None, gt=0, lt=1, description="Hold out a seeded random fraction instead: rows "
        "shuffled by numpy.random.default_rng(seed).permutation(n), the last "
        "ceil(n * validation_split_shuffled) of that order held out (for data sorted by "
        "class, where Keras's last rows would be one class).")
    validation_dataset_id: str | None = None
    validation_freq: int = Field(1, ge=1, le=100_000)
    shuffle: bool = True
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    deterministic: bool = Field(False, description="TensorFlow op determinism (slower).")
    callbacks: list[CallbackSpec] = Field(default_factory=list)
    terminate_on_nan: bool = True
    keep_best: KeepBestOptions | None = None
    tensorboard: bool = Field(False, description="Write TensorBoard event files (scalars per "
                              "epoch) to tensorboard/<job id> in the artifact store; "
                              "`keras-jobs tensorboard` serves them.")
    tensorboard_graph: bool = Field(False, description="With tensorboard: the model's graph "
                                    "too.")
    input: Literal["auto", "memory", "stream"] = Field(
        "auto", description="'memory' loads the arrays; 'stream' feeds batches from the "
        "memory-mapped arrays through tf.data; 'auto' streams above KJ_STREAM_THRESHOLD_BYTES.")
    model_name: str | None = Field(None, pattern=MODEL_NAME_PATTERN,
                                   description="Saved as the next version of this model; "
                                   "defaults to the spec's (or from_model's) name.")
    max_runtime_s: MaxRuntime = None
    max_attempts: MaxAttempts = 3


class _SavedModelJob(BaseModel):
    """What evaluate and (batch) predict jobs share: a saved version and the rows it reads."""

    model_config = STRICT_REQUEST

    model: ModelRef = Field(description="'name' (latest version) or 'name/3'")
    dataset_id: str
    x: ArraySelector = "x"
    max_runtime_s: MaxRuntime = None
    max_attempts: MaxAttempts = 3


class EvaluateJobCreate(_SavedModelJob):
    type: Literal["evaluate"]
    y: ArraySelector = "y"
    batch_size: int = Field(32, ge=1, le=1_000_000)


class PredictJobCreate(_SavedModelJob):
    """`model.predict(x, batch_size=batch_size)` over a whole dataset, streamed in chunks; the
    predictions are stored as a new dataset."""

    type: Literal["predict"]
    batch_size: int = Field(128, ge=1, le=1_000_000)
    output_name: ArrayName = Field(
        "predictions", description="The output dataset's array; a model with several outputs "
        "gets one array per output, named '<output_name>.<model output name>'.")


JobCreate = Annotated[FitJobCreate | EvaluateJobCreate | PredictJobCreate,
                      Field(discriminator="type")]


class FitJobParams(FitJobCreate):
    """A fit job as its worker reads it from `Job.params`: the request, plus what the service
    resolved when it was accepted."""

    from_model_version_id: str | None = None


class EvaluateJobParams(EvaluateJobCreate):
    model_version_id: str


class PredictJobParams(PredictJobCreate):
    model_version_id: str


JobParams = FitJobParams | EvaluateJobParams | PredictJobParams
_PARAMS: TypeAdapter[JobParams] = TypeAdapter(
    Annotated[JobParams, Field(discriminator="type")])


def parse_params(raw: dict[str, Any]) -> JobParams:
    """`Job.params` validated with the models the API used; a row that no longer fits them
    (written by an older release) fails its job with the reason."""
    try:
        return _PARAMS.validate_python(upgrade_params(raw))
    except ValidationError as exc:
        raise DomainError(422, "Job parameters invalid", "This job's stored parameters no "
                          f"longer match what a job takes; submit it again. {exc}",
                          type="/problems/invalid-input") from exc


def upgrade_params(raw: dict[str, Any]) -> dict[str, Any]:
    """A fit job's params as written by a release whose `validation_split` was the seeded
    shuffled split (every row written since holds `validation_split_shuffled`, null or not):
    that split is kept, so a job queued or resumed across the upgrade holds out the rows its
    earlier attempts held out."""
    if (raw.get("type") == "fit" and "validation_split_shuffled" not in raw
            and raw.get("validation_split")):
        return {**raw, "validation_split": None,
                "validation_split_shuffled": raw["validation_split"]}
    return raw


class AttemptRead(BaseModel):
    """One run of the job by one worker process."""

    number: int
    worker: str = Field(description="hostname:pid of the process that ran it")
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None = Field(description="succeeded, failed, cancelled, handed_back (its "
                                "worker shut down), died (its process stopped); null while "
                                "it runs")
    reason: str | None
    epoch_at_start: int = Field(description="epochs the job had finished when it began")
    resumed_from_epoch: int | None = Field(description="the epoch its training began at (from "
                                           "a checkpoint, or the first)")
    warnings: list[str]


class JobRead(BaseModel):
    id: str
    type: JobType
    status: JobStatus
    epoch: int
    epochs: int
    history: dict[str, list[float | None]]
    result: dict[str, Any] | None
    error: str | None
    model_name: str | None
    model_version: int | None
    spec_id: str | None
    dataset_id: str | None
    params: dict[str, Any]
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    attempts: list[AttemptRead] = Field(default_factory=list)
    url: str
