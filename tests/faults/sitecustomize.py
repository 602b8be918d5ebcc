"""Fault injection for end-to-end tests, outside production code: a process started with this
folder first on its PYTHONPATH imports this module at start-up (Python's `sitecustomize`
hook). With KJ_FAULT_KILL_IN_CHECKPOINT=N it kills itself (SIGKILL) while writing the checkpoint
of N finished epochs: after the temporary folder is written and flushed, before its rename;
once per job (a marker file in the job's checkpoint folder says it happened). Forked children
(the worker's training process) inherit the hook."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

KILL_ENV = "KJ_FAULT_KILL_IN_CHECKPOINT"
TARGET = "app.training.checkpoints"


def _patch(module: Any, epoch: int) -> None:
    """Wrap the writer's flush of a finished temporary folder, the last step before the
    rename, with the kill."""
    flush = module._fsync_folder

    def flush_then_die(folder: Path, files: tuple[str, ...] = ()) -> None:
        flush(folder, files)
        if not files or not folder.name.startswith(module.TMP_PREFIX):
            return  # the flush of the checkpoints folder after a rename
        meta = json.loads((folder / module.META).read_text())
        marker = folder.parent / f".killed-at-{epoch}"
        if meta["epoch"] != epoch or meta["batch"] != 0 or marker.exists():
            return
        marker.touch()
        logging.getLogger(TARGET).warning(
            "%s=%d: killing this process in the middle of a checkpoint", KILL_ENV, epoch)
        os.kill(os.getpid(), signal.SIGKILL)

    module._fsync_folder = flush_then_die


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds TARGET the usual way and patches it once it has run (importing it here, at
    start-up, would load Keras into every process)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, epoch = spec.loader, self.epoch
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _patch(module, epoch)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get(KILL_ENV):
    sys.meta_path.insert(0, _PatchOnImport(int(os.environ[KILL_ENV])))
