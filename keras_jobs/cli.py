"""The client's commands of the `keras-jobs` console script: specs, datasets, jobs, models.

They are registered on the script's parser by `add_commands` (app/cli.py keeps serve, worker
and migrate); each talks to the service over HTTP through `Client`, prints a table (or the
service's JSON with `--json`) and returns the exit status. `--url`, `--api-key` and `--json`
may come before the command or after it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keras_jobs.client import Client
from keras_jobs.errors import KerasJobsError
from keras_jobs.render import cell, history_table, pairs, table
from keras_jobs.transport import DEFAULT_URL

Handler = Callable[[Client, argparse.Namespace], int]
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def add_commands(parser: argparse.ArgumentParser,
                 sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the global options to `parser` and the command groups to its subcommands."""
    parser.add_argument("--url", default=os.environ.get("KJ_URL") or DEFAULT_URL,
                        help="the service (default: $KJ_URL or %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("KJ_API_KEY"),
                        help="sent as 'Authorization: Bearer' (default: $KJ_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the service's JSON")
    # The same options after the command; SUPPRESS keeps the values given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--api-key", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the service's JSON (for scripts)")

    def group(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        return sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_command",
                                                              required=True)

    def command(grp: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                handler: Handler, help: str) -> argparse.ArgumentParser:
        p = grp.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=lambda args: run(handler, args))
        return p

    specs = group("specs", "model specs")
    command(specs, "create", spec_create, "validate and store a spec (JSON file or -)") \
        .add_argument("file")
    command(specs, "list", spec_list, "specs, newest first").add_argument(
        "--limit", type=int, default=50)
    command(specs, "show", spec_show, "a spec: its parameters and layers").add_argument("id")

    datasets = group("datasets", "datasets")
    command(datasets, "list", dataset_list, "datasets, newest first").add_argument(
        "--limit", type=int, default=50)
    command(datasets, "show", dataset_show, "a dataset: its rows and arrays").add_argument("id")
    upload = command(datasets, "upload", dataset_upload,
                     "upload a .npz, .npy or CSV file as a dataset")
    upload.add_argument("file")
    upload.add_argument("--name", help="the dataset's name (default: the file's)")

    arrays = command(datasets, "download", dataset_download,
                     "save a dataset's arrays (a batch-predict job's predictions) as .npz, or "
                     "one array as .npy")
    arrays.add_argument("id")
    arrays.add_argument("--array", help="only this array (saved as .npy)")
    arrays.add_argument("--output", "-o", required=True, help="the file to write")

    jobs = group("jobs", "fit, evaluate and predict jobs")
    submit = command(jobs, "submit", job_submit, "submit a job (JSON body file or -)")
    submit.add_argument("file")
    submit.add_argument("--watch", action="store_true",
                        help="follow it to its end (exit status 1 unless it succeeds)")
    listing = command(jobs, "list", job_list, "jobs, newest first")
    listing.add_argument("--status", choices=JOB_STATUSES)
    listing.add_argument("--limit", type=int, default=50)
    command(jobs, "show", job_show, "a job, its history and result").add_argument("id")
    command(jobs, "watch", job_watch, "follow a job: a bar per epoch and a table of its "
            "metrics; exit status 0 if it succeeded, 1 if it failed or was cancelled") \
        .add_argument("id")
    command(jobs, "cancel", job_cancel, "cancel a queued or running job").add_argument("id")

    models = group("models", "trained models")
    command(models, "list", model_list, "models and their latest versions")
    uploading = command(models, "upload", model_upload, "upload a .keras file "
                        "(model.save('m.keras')) as the next version of a model")
    uploading.add_argument("file")
    uploading.add_argument("name")
    command(models, "show", model_show, "a model's versions, metrics and labels") \
        .add_argument("name")
    remove = command(models, "delete-version", model_delete_version,
                     "delete a version (move its labels off it first)")
    remove.add_argument("name")
    remove.add_argument("version", type=int)
    predict = command(models, "predict", model_predict,
                      "predict with a served version: a .npy/.npz file of inputs, or a "
                      "TensorFlow Serving JSON body ({\"instances\": ...})")
    predict.add_argument("name")
    predict.add_argument("file")
    predict.add_argument("--version", type=int)
    predict.add_argument("--label")
    predict.add_argument("--output", "-o", help="save the predictions as .npy (.npz for "
                         "several outputs)")


# What a shell reports for a process that SIGPIPE ended (128 + 13).
SIGPIPE_EXIT = 141


def run(handler: Handler, args: argparse.Namespace) -> int:
    """A command with its client; a refused request or an unreachable service is a message on
    stderr and exit status 1."""
    # httpx logs every request at INFO, the service's default log level: noise under a table.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        with Client(args.url, args.api_key) as client:
            return handler(client, args)
    except KerasJobsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader left (`keras-jobs jobs list | head`): no message, and no second one when
        # Python flushes stdout at exit (the way Python's signal docs recommend).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def emit(args: argparse.Namespace, value: Any, text: str) -> None:
    print(json.dumps(value, indent=2) if args.json else text)


def _emit_page(args: argparse.Namespace, page: dict[str, Any], headers: list[str],
               rows: list[list[Any]]) -> None:
    """A list page: its rows as a table, and how many of the total they are."""
    emit(args, page, table(headers, rows) + f"\n({len(rows)} of {page['total']})")


def _when(stamp: str) -> str:
    """An ISO time as a table shows it: to the second, a space for the T."""
    return stamp[:19].replace("T", " ")


def read_json(path: str) -> Any:
    raw = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None


# --- specs and datasets ------------------------------------------------------------------

def spec_create(client: Client, args: argparse.Namespace) -> int:
    return _spec_out(args, client.create_spec(read_json(args.file)))


def spec_show(client: Client, args: argparse.Namespace) -> int:
    return _spec_out(args, client.spec(args.id))


def spec_list(client: Client, args: argparse.Namespace) -> int:
    page = client.specs(args.limit)
    rows = [[s["id"], s["name"], s["total_params"], _when(s["created_at"])]
            for s in page["items"]]
    _emit_page(args, page, ["id", "name", "params", "created"], rows)
    return 0


def _spec_out(args: argparse.Namespace, spec: dict[str, Any]) -> int:
    layers = spec.get("summary", {}).get("layers", [])
    emit(args, spec, pairs([("id", spec["id"]), ("name", spec["name"]),
                            ("total params", spec["total_params"]),
                            ("trainable params", spec["trainable_params"])]) + "\n\n" +
         table(["layer", "class", "output shape", "params"],
               [[la["name"], la["class_name"], la["output_shape"], la["params"]]
                for la in layers]))
    return 0


def dataset_upload(client: Client, args: argparse.Namespace) -> int:
    dataset = client.upload_file(args.file, args.name, progress=not args.json,
                                 file=sys.stderr)
    emit(args, dataset, _dataset_text(dataset))
    return 0


def dataset_list(client: Client, args: argparse.Namespace) -> int:
    page = client.datasets(args.limit)
    rows = [[d["id"], d["name"], d["num_rows"], d["size_bytes"],
             _when(d["created_at"])] for d in page["items"]]
    _emit_page(args, page, ["id", "name", "rows", "bytes", "created"], rows)
    return 0


def dataset_show(client: Client, args: argparse.Namespace) -> int:
    dataset = client.dataset_info(args.id)
    emit(args, dataset, _dataset_text(dataset))
    return 0


def _dataset_text(dataset: dict[str, Any]) -> str:
    arrays = dataset.get("arrays", {})
    return pairs([("id", dataset["id"]), ("name", dataset["name"]),
                  ("rows", dataset["num_rows"]), ("bytes", dataset["size_bytes"]),
                  ("sha256", dataset["sha256"])]) + "\n\n" + \
        table(["array", "shape", "dtype"],
              [[name, meta.get("shape"), meta.get("dtype")] for name, meta in arrays.items()])


def dataset_download(client: Client, args: argparse.Namespace) -> int:
    import numpy as np

    from keras_jobs.arrays import write_npz

    arrays = client.dataset(args.id, args.array)
    if isinstance(arrays, dict):
        with open(args.output, "wb") as out:
            write_npz(arrays, out)
        shapes = {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()}
    else:
        np.save(args.output, arrays, allow_pickle=False)
        shapes = {args.array: [list(arrays.shape), str(arrays.dtype)]}
    emit(args, {"output": args.output, "arrays": shapes},
         table(["array", "shape", "dtype"], [[k, v[0], v[1]] for k, v in shapes.items()])
         + f"\nwritten to {args.output}")
    return 0


# --- jobs ----------------------------------------------------------------------------------

def job_submit(client: Client, args: argparse.Namespace) -> int:
    job = client.submit(read_json(args.file))
    if args.watch:
        if not args.json:
            print(f"{job['id']} {job['status']}")
        return _watch(client, args, job["id"])
    emit(args, job, _job_text(job))
    return 0


def job_list(client: Client, args: argparse.Namespace) -> int:
    page = client.jobs(args.status, args.limit)
    rows = [[j["id"], j["type"], j["status"], f"{j['epoch']}/{j['epochs']}",
             _model_ref(j), _when(j["created_at"])] for j in page["items"]]
    _emit_page(args, page, ["id", "type", "status", "epochs", "model", "created"], rows)
    return 0


def job_show(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.id)
    emit(args, job, _job_text(job))
    return 0


def job_watch(client: Client, args: argparse.Namespace) -> int:
    return _watch(client, args, args.id)


def job_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.id)
    emit(args, job, pairs([("id", job["id"]), ("status", job["status"]),
                           ("cancel requested", job["cancel_requested"])]))
    return 0


def _watch(client: Client, args: argparse.Namespace, job_id: str) -> int:
    """Bars on stderr (stdout stays the table's, or the JSON's); 0 only if it succeeded."""
    try:
        job = client.watch(job_id, table=not args.json, progress=not args.json,
                           file=sys.stderr, table_file=sys.stdout)
    except KeyboardInterrupt:
        print(f"\nstopped watching; {job_id} keeps running "
              f"(keras-jobs jobs cancel {job_id} stops it)", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        print(_summary(job))
    return 0 if job["status"] == "succeeded" else 1


def _summary(job: dict[str, Any]) -> str:
    if job["status"] == "succeeded":
        result = job.get("result") or {}
        metrics = result.get("metrics", result) if isinstance(result, dict) else {}
        saved = f", saved as {_model_ref(job)}" if job.get("model_version") else ""
        return (f"{job['id']} succeeded{saved}: "
                + ", ".join(f"{k}={cell(v)}" for k, v in metrics.items() if k != "model"))
    return f"{job['id']} {job['status']}: {job.get('error') or ''}".rstrip(": ")


def _model_ref(job: dict[str, Any]) -> str | None:
    if job.get("model_name") and job.get("model_version"):
        return f"{job['model_name']}/{job['model_version']}"
    return job.get("model_name") or (job.get("params") or {}).get("model")


def _job_text(job: dict[str, Any]) -> str:
    items: list[tuple[str, Any]] = [
        ("id", job["id"]), ("type", job["type"]), ("status", job["status"]),
        ("epochs", f"{job['epoch']}/{job['epochs']}"), ("model", _model_ref(job)),
        ("spec", job.get("spec_id")), ("dataset", job.get("dataset_id")),
        ("created", job.get("created_at")), ("started", job.get("started_at")),
        ("finished", job.get("finished_at"))]
    if job.get("error"):
        items.append(("error", job["error"]))
    if job.get("result"):
        items.append(("result", job["result"]))
    text = pairs(items)
    if job.get("history"):
        first = int((job.get("params") or {}).get("initial_epoch") or 0)
        text += "\n\n" + history_table(job["history"], first)
    return text


# --- models --------------------------------------------------------------------------------

def model_list(client: Client, args: argparse.Namespace) -> int:
    page = client.models()
    emit(args, page, table(["model", "latest", "versions", "updated"],
                           [[m["name"], m["latest_version"], m["versions"],
                             _when(m["updated_at"])] for m in page["items"]]))
    return 0


def model_upload(client: Client, args: argparse.Namespace) -> int:
    created = client.upload_model(args.file, args.name, progress=not args.json,
                                  file=sys.stderr)
    emit(args, created, pairs([("model", created["name"]), ("version", created["version"]),
                               ("bytes", created.get("size_bytes"))]))
    return 0


def model_show(client: Client, args: argparse.Namespace) -> int:
    model = client.model(args.name)
    labels = ", ".join(f"{k}→{v}" for k, v in model.get("labels", {}).items()) or "-"
    # best epoch: the epoch whose weights (and metrics) the version holds.
    versions = table(["version", "job", "created", "best epoch", "metrics"],
                     [[v["version"], v.get("job_id"), _when(v["created_at"]),
                       v.get("best_epoch"), v.get("metrics") or {}] for v in model["versions"]])
    emit(args, model, pairs([("model", model["name"]), ("latest", model["latest_version"]),
                             ("labels", labels)]) + "\n\n" + versions)
    return 0


def model_delete_version(client: Client, args: argparse.Namespace) -> int:
    client.delete_version(args.name, args.version)
    emit(args, {"name": args.name, "version": args.version, "deleted": True},
         f"deleted {args.name}/{args.version}")
    return 0


def model_predict(client: Client, args: argparse.Namespace) -> int:
    import numpy as np

    if args.version is not None and args.label is not None:
        raise ValueError("give --version or --label, not both")
    if args.file.endswith(".json") or args.file == "-":
        answer = client.predict_json(args.name, read_json(args.file), args.version, args.label)
        values = answer.get("predictions", answer.get("outputs"))
        text = _array_text(np.asarray(values)) if _numeric(values) else json.dumps(answer)
        emit(args, answer, text)
        return 0
    loaded = np.load(args.file, allow_pickle=False)
    x: Any = ({k: loaded[k] for k in loaded.files} if isinstance(loaded, np.lib.npyio.NpzFile)
              else loaded)
    predictions = client.predict(args.name, x, version=args.version, label=args.label)
    if args.output:
        from keras_jobs.arrays import write_npz

        if isinstance(predictions, dict):
            with open(args.output, "wb") as out:
                write_npz(predictions, out)
        else:
            np.save(args.output, predictions, allow_pickle=False)
    if isinstance(predictions, dict):
        emit(args, {k: v.tolist() for k, v in predictions.items()},
             "\n\n".join(f"{k}:\n{_array_text(v)}" for k, v in predictions.items()))
    else:
        emit(args, {"predictions": predictions.tolist()}, _array_text(predictions))
    return 0


def _numeric(values: Any) -> bool:
    import numpy as np

    try:
        return bool(values is not None and np.asarray(values).dtype.kind in "biuf")
    except (ValueError, TypeError):  # ragged or mixed: print the JSON
        return False


def _array_text(array: Any) -> str:
    """Rows of a 1-D or 2-D array as a table; anything higher as NumPy prints it."""
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        return str(array)
    rows = [[i, *(float(v) for v in row)] for i, row in enumerate(array.tolist())]
    return table(["row", *(f"[{j}]" for j in range(array.shape[1]))], rows)
