"""Following a job to its end: the epoch bars (their length known before the first progress
event), the Ctrl-C question (cancel the job or leave it running), and the job's final JSON,
or `KerasJobsError` when it failed or was cancelled."""

from __future__ import annotations

import builtins
import math
from typing import IO, TYPE_CHECKING, Any

from keras_jobs.errors import KerasJobsError
from keras_jobs.events import TERMINAL

if TYPE_CHECKING:
    from keras_jobs.progress import EpochBars
    from keras_jobs.resources import Resources


def epoch_bars(client: Resources, job: dict[str, Any] | None, params: dict[str, Any] | None,
               first_epoch: int, progress: bool, file: IO[str] | None,
               table: bool, table_file: IO[str] | None = None) -> EpochBars:
    """Bars for a job's epochs, sized from the job's JSON or from the `params` of a fit."""
    from keras_jobs.progress import EpochBars

    if job is not None:
        epochs = int(job["epochs"])
        steps = expected_steps(client, job)
    else:
        assert params is not None
        epochs, steps = int(params["epochs"]), params.get("steps")
    return EpochBars(epochs, steps, first_epoch=first_epoch, file=file, table=table,
                     table_file=table_file, disable=not progress)


def expected_steps(client: Resources, job: dict[str, Any]) -> int | None:
    """Batches per epoch of a fit job, for the bar's length before the first progress
    event says it: the dataset's rows less the held-out fraction, over the batch size."""
    p = job.get("params") or {}
    if job.get("type") != "fit":
        return None
    if p.get("steps_per_epoch"):
        return int(p["steps_per_epoch"])
    try:
        n = int(client.dataset_info(str(job["dataset_id"]))["num_rows"])
    except (KerasJobsError, KeyError, TypeError, ValueError):
        return None
    if p.get("validation_split"):
        n = int(math.floor(n * (1.0 - float(p["validation_split"]))))
    elif p.get("validation_split_shuffled"):
        n = math.ceil(n * (1 - float(p["validation_split_shuffled"])))
    return math.ceil(n / int(p.get("batch_size") or 32))


def follow_job(client: Resources, job_id: str, bars: EpochBars | None) -> dict[str, Any] | None:
    """Follow the job to its end and return its JSON if it succeeded (KerasJobsError if it
    failed or was cancelled). Ctrl-C asks whether to cancel it: yes re-raises the
    KeyboardInterrupt once the cancel is sent, no returns None (it keeps running)."""
    try:
        for event in client.events(job_id):
            if bars is not None:
                bars.handle(event)
    except KeyboardInterrupt:
        if bars is not None:
            bars.close()
        if ask_cancel(job_id):
            client.cancel(job_id)
            print(f"Cancel requested for {job_id}.")
            raise
        print(f"{job_id} keeps running; Client.attach({job_id!r}) follows it again.")
        return None
    finally:
        if bars is not None:
            bars.close()
    job = client.job(job_id)
    if job["status"] == "succeeded":
        return job
    status = job["status"]
    if status not in TERMINAL:  # the stream said it ended; the row must agree
        raise KerasJobsError("Job still running", f"{job_id} is {status}", job=job)
    raise KerasJobsError(f"Job {status}", str(job.get("error") or f"{job_id} was {status}"),
                         job=job)


def ask_cancel(job_id: str) -> bool:
    """Cancel (the default: Ctrl-C usually means stop) or leave the job running. A second
    Ctrl-C, or no terminal to ask on, takes the default."""
    try:
        answer = builtins.input(f"\nInterrupted. Cancel job {job_id} on the service? "
                                "[Y/n] (n leaves it running) ")
    except (EOFError, KeyboardInterrupt):
        return True
    return answer.strip().lower() not in ("n", "no")


def initial_epoch(job: dict[str, Any]) -> int:
    return int((job.get("params") or {}).get("initial_epoch") or 0)
