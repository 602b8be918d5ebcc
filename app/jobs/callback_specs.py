"""The Keras callbacks a job may ask for, by name with their arguments (JSON values only).

Checked in the API when the job is submitted and built again in the worker. What runs is
Keras's own callback, or the service's equivalent of the one a notebook would use:

- EarlyStopping, ReduceLROnPlateau, TerminateOnNaN: Keras's own.
- LearningRateScheduler: with a built-in schedule, `{"class_name": "ExponentialDecay",
  "config": {...}}` (keras.optimizers.schedules), evaluated at the epoch number as Keras's
  LearningRateScheduler evaluates a schedule object. No Python function.
- ModelCheckpoint: `save_best_only: true` is the job's `keep_best` (monitor, mode,
  initial_value_threshold); without it the last epoch is saved, as always. The version is the
  job's file: `filepath` is never opened.
- CSVLogger: one CSV line per epoch in the job's log (GET /v1/jobs/{id}/logs); `filename` is
  never opened.
- BackupAndRestore: accepted, nothing to add: every fit job is checkpointed at each epoch's
  end and resumes from there (docs/deployment.md, "What survives what").

Anything else is refused with what to use instead.
"""

from __future__ import annotations

from typing import Any

from app.core.errors import FieldError, did_you_mean, invalid

RUN_AS_IS = ("EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN")
MAPPED = ("LearningRateScheduler", "ModelCheckpoint", "CSVLogger", "BackupAndRestore")
ALLOWED = (*RUN_AS_IS, *MAPPED)

# The arguments each mapped callback takes (Keras's names); the values are checked below.
MAPPED_ARGS: dict[str, frozenset[str]] = {
    "LearningRateScheduler": frozenset({"schedule", "verbose"}),
    "ModelCheckpoint": frozenset({"filepath", "monitor", "verbose", "save_best_only",
                                  "save_weights_only", "mode", "save_freq",
                                  "initial_value_threshold"}),
    "CSVLogger": frozenset({"filename", "separator", "append"}),
    "BackupAndRestore": frozenset({"backup_dir", "save_freq", "double_checkpoint",
                                   "delete_checkpoint"}),
}

# What to use instead of the Keras callbacks the service does not run.
INSTEAD: dict[str, str] = {
    "LambdaCallback": "it runs Python code, which the service never runs; follow the job's "
                      "events (GET /v1/jobs/{id}/events, client.attach) or read its history "
                      "afterwards",
    "TensorBoard": "give the job option \"tensorboard\": true (and \"tensorboard_graph\"); "
                   "`keras-jobs tensorboard` serves the event files",
    "ProgbarLogger": "the client shows a progress bar from the job's events; "
                     "GET /v1/jobs/{id}/events streams them",
    "History": "the job's history is in GET /v1/jobs/{id}; client.fit returns it as a History",
    "RemoteMonitor": "the service sends nothing out; follow GET /v1/jobs/{id}/events",
    "SwapEMAWeights": "not run by the service; train without it, or evaluate the saved "
                      "version",
}
USER_CODE = ("a callback class of your own runs Python code, which the service never runs; "
             f"use one of {', '.join(ALLOWED)}, or the job options (keep_best, tensorboard, "
             "terminate_on_nan) and its events stream")


def build(specs: list[dict[str, Any]], pointer: str = "/callbacks",
          keep_best: dict[str, Any] | None = None) -> list[Any]:
    """Keras callback objects for `specs` (mapped ones that need no object give none); any
    problem is a 422 at its pointer. `keep_best`: the job's own option, which a
    ModelCheckpoint(save_best_only=True) may not contradict."""
    import keras

    from app.specs.arg_types import check_arg_types
    from app.specs.construct import check_kwargs, first_line

    out = []
    for i, spec in enumerate(specs):
        ptr = f"{pointer}/{i}"
        name = spec.get("type")
        if name not in ALLOWED:
            raise _refused(str(name), ptr)
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        if name in MAPPED:
            made = _mapped(str(name), kwargs, ptr, keep_best)
            if made is not None:
                out.append(made)
            continue
        _check_plain(kwargs, ptr)
        cls = getattr(keras.callbacks, str(name))
        check_kwargs(cls, kwargs, ptr, "callback")
        check_arg_types(cls, kwargs, ptr)  # `"patience": true` is not 1
        try:
            out.append(cls(**kwargs))
        except (TypeError, ValueError) as exc:
            raise invalid(f"Callback {name} rejected its arguments.",
                          [FieldError(ptr, first_line(exc))]) from exc
    best = [s for s in specs if s.get("type") == "ModelCheckpoint" and s.get("save_best_only")]
    if len(best) > 1:
        raise invalid("One best epoch per job.", [FieldError(
            f"{pointer}/{specs.index(best[1])}", "only one ModelCheckpoint may have "
            "save_best_only: true (the job saves one version)")])
    return out


def keep_best_of(specs: list[dict[str, Any]], keep_best: dict[str, Any] | None
                 ) -> dict[str, Any] | None:
    """The job's best-epoch rule: its `keep_best`, or a ModelCheckpoint(save_best_only)'s
    (`build` has checked that they agree)."""
    if keep_best is not None:
        return keep_best
    for spec in specs:
        if spec.get("type") == "ModelCheckpoint" and spec.get("save_best_only"):
            return {"monitor": spec.get("monitor", "val_loss"), "mode": spec.get("mode", "auto"),
                    "initial_value_threshold": spec.get("initial_value_threshold")}
    return None


def _refused(name: str, ptr: str) -> Exception:
    reason = INSTEAD.get(name)
    if reason is None:
        import keras

        known = isinstance(getattr(keras.callbacks, name, None), type)
        reason = ("not run by the service" if known else USER_CODE) + \
            did_you_mean(name, ALLOWED)
    return invalid(f"Callback '{name}' is not available: {reason}.",
                   [FieldError(f"{ptr}/type", f"one of {', '.join(ALLOWED)}; '{name}': "
                                              f"{reason}")])


def _check_plain(kwargs: dict[str, Any], ptr: str) -> None:
    for key, value in kwargs.items():
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise invalid("Callback arguments are plain values.",
                          [FieldError(f"{ptr}/{key}", "expected a string, number or bool")])


def _expect(kwargs: dict[str, Any], key: str, ptr: str, kinds: tuple[type, ...],
            what: str) -> None:
    value = kwargs.get(key)
    if key in kwargs and value is not None and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        raise invalid(f"Callback argument '{key}' is {what}.",
                      [FieldError(f"{ptr}/{key}", f"expected {what}")])


def _mapped(name: str, kwargs: dict[str, Any], ptr: str,
            keep_best: dict[str, Any] | None) -> Any:
    allowed = MAPPED_ARGS[name]
    for key in kwargs:
        if key not in allowed:
            raise invalid(f"Callback {name} has no argument '{key}'.", [FieldError(
                f"{ptr}/{key}", f"{name} takes {', '.join(sorted(allowed))}"
                f"{did_you_mean(key, allowed)}")])
    if name == "LearningRateScheduler":
        return _scheduler(kwargs, ptr)
    if name == "CSVLogger":
        _expect(kwargs, "filename", ptr, (str,), "a string (it is not opened)")
        _expect(kwargs, "append", ptr, (bool,), "true or false")
        separator = kwargs.get("separator", ",")
        if not isinstance(separator, str) or len(separator) != 1 or separator in "\r\n":
            raise invalid("CSVLogger's separator is one character.",
                          [FieldError(f"{ptr}/separator", "expected one character, e.g. ','")])
        from app.jobs.mapped_callbacks import EpochsAsCsv

        return EpochsAsCsv(separator)
    if name == "BackupAndRestore":
        _check_plain(kwargs, ptr)
        return None
    _checkpoint(kwargs, ptr, keep_best)
    return None


def _checkpoint(kwargs: dict[str, Any], ptr: str, keep_best: dict[str, Any] | None) -> None:
    _check_plain(kwargs, ptr)
    for key in ("filepath", "monitor"):
        _expect(kwargs, key, ptr, (str,), "a string")
    for key in ("save_best_only", "save_weights_only"):
        _expect(kwargs, key, ptr, (bool,), "true or false")
    _expect(kwargs, "initial_value_threshold", ptr, (int, float), "a number")
    if kwargs.get("mode", "auto") not in ("auto", "min", "max"):
        raise invalid("ModelCheckpoint's mode is auto, min or max.",
                      [FieldError(f"{ptr}/mode", "expected 'auto', 'min' or 'max'")])
    if kwargs.get("save_freq", "epoch") != "epoch":
        raise invalid("ModelCheckpoint saves once per epoch here.", [FieldError(
            f"{ptr}/save_freq", "only 'epoch': the job saves one version (the best epoch's "
            "with save_best_only, else the last), and checkpoints itself every epoch")])
    if keep_best is not None and kwargs.get("save_best_only"):
        same = (keep_best.get("monitor", "val_loss") == kwargs.get("monitor", "val_loss")
                and keep_best.get("mode", "auto") == kwargs.get("mode", "auto"))
        if not same:
            raise invalid("ModelCheckpoint(save_best_only) and keep_best disagree.",
                          [FieldError(f"{ptr}/monitor", "give the best-epoch rule once: "
                                      "keep_best or ModelCheckpoint(save_best_only=true)")])


def _scheduler(kwargs: dict[str, Any], ptr: str) -> Any:
    from app.specs.allowlist import resolve_class
    from app.specs.construct import check_kwargs, instantiate, pointer_join
    from app.specs.keras_config import normalize

    _expect(kwargs, "verbose", ptr, (int,), "0 or 1")
    raw = kwargs.get("schedule")
    sptr = pointer_join(ptr, "schedule")
    if not isinstance(raw, dict) or "class_name" not in raw:
        raise invalid("LearningRateScheduler takes a built-in schedule.", [FieldError(
            sptr, 'expected {"class_name": <a keras.optimizers.schedules class, e.g. '
            'ExponentialDecay, PiecewiseConstantDecay, CosineDecay>, "config": {...}}; a '
            "Python function is code, which the service never runs (or give the schedule "
            "as the optimizer's learning_rate in the spec's compile block, stepped per "
            "batch)")])
    cls = resolve_class("schedule", raw["class_name"], pointer_join(sptr, "class_name"))
    checked = normalize(raw, sptr, "schedule")
    cfg_ptr = pointer_join(sptr, "config")
    check_kwargs(cls, checked["config"], cfg_ptr, "learning-rate schedule")
    schedule = instantiate(cls, checked["config"], cfg_ptr, "learning-rate schedule")
    from app.jobs.mapped_callbacks import schedule_by_epoch

    return schedule_by_epoch(schedule, int(kwargs.get("verbose") or 0))
