"""A job's checkpoints, written so that a kill at any instant leaves the previous one whole.

Keras's `BackupAndRestore` overwrites `latest.weights.h5` in place and then writes
`training_metadata.json`: a process killed during the first write leaves a truncated HDF5 file
(`bad object header`), one killed between the two leaves weights and epoch that disagree, and
either way the job can never resume. Here each checkpoint is its own folder,
`e<epoch>-b<batch>/` holding `weights.weights.h5` and `meta.json`, written under a temporary
name and renamed into place (a rename is atomic on one file system); the newest `keep` are
kept. At the start of training the newest one that reads back is restored; one that does not
is discarded with a warning (`on_warning`), and training resumes from the one before, or from
the start.

`e5-b0` is the state after epoch 4 (5 finished epochs, training resumes at epoch 5);
`e5-b120` is the state after 120 batches of epoch 5, written when the job is handed back in
the middle of an epoch: training resumes at the start of epoch 5 from those weights, as
Keras's own `BackupAndRestore(save_freq=N)` does. `meta.json` also carries the logs of the
last finished epoch, so the epoch a process finished and checkpointed but was killed before
recording is recorded by the next attempt instead of being lost.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from app.training.callbacks import clean_logs

log = logging.getLogger(__name__)

WEIGHTS = "weights.weights.h5"
META = "meta.json"
NAME = re.compile(r"e(\d{6})-b(\d{6})")
TMP_PREFIX = ".tmp-"
# Keras's own BackupAndRestore files (checkpoints written before this writer existed).
LEGACY_WEIGHTS = "latest.weights.h5"
LEGACY_META = "training_metadata.json"


class Restored:
    """What training resumes from: `epoch` (the first epoch to train), `batch` (>0 for a
    mid-epoch checkpoint) and the logs of the last finished epoch (`epoch - 1`), if known."""

    def __init__(self, name: str, epoch: int, batch: int,
                 last_logs: dict[str, float | None] | None) -> None:
        self.name, self.epoch, self.batch, self.last_logs = name, epoch, batch, last_logs


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):  # type: ignore[misc]
    """`BackupAndRestore` with atomic checkpoints, a fallback to the previous one, and a
    checkpoint on demand in the middle of an epoch (hand back).

    `hand_back_now()` is asked after every batch: once it says yes, the state is saved as a
    mid-epoch checkpoint (once). `cut_short(epoch)` says an epoch was stopped before its end;
    its end is then not saved as a finished epoch. `on_restored(restored or None)` is called
    once training knows where it starts. The folder is left in place when training ends: the
    job removes it once it has ended (a handed-back job resumes from it)."""

    def __init__(self, backup_dir: Path, *, keep: int = 2,
                 on_warning: Callable[[str], None] = lambda _msg: None,
                 hand_back_now: Callable[[], bool] = lambda: False,
                 cut_short: Callable[[int], bool] = lambda _epoch: False,
                 on_restored: Callable[[Restored | None], None] = lambda _r: None) -> None:
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=False)
        self.dir = backup_dir
        self.keep = max(1, keep)
        self.on_warning = on_warning
        self.hand_back_now = hand_back_now
        self.cut_short = cut_short
        self.on_restored = on_restored
        self.restored: Restored | None = None
        self.saved_mid_epoch: str | None = None
        self._epoch = 0
        self._batches = 0
        self._last_logs: dict[str, float | None] | None = None

    # -- restore ---------------------------------------------------------------------------

    def on_train_begin(self, logs: Any = None) -> None:
        self._restore_newest()
        self.on_restored(self.restored)

    def _restore_newest(self) -> None:
        self._remove_partial_writes()
        for folder in self.checkpoints()[::-1]:
            try:
                restored = self._restore(folder)
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is discarded
                msg = (f"checkpoint {folder.name} could not be read ({type(exc).__name__}: "
                       f"{exc}); discarded, resuming from the one before it (or the start)")
                log.warning("%s", msg)
                self.on_warning(msg)
                _remove(folder)
                continue
            self.restored = restored
            self._last_logs = restored.last_logs
            # Keras starts at model._initial_epoch when set (its own BackupAndRestore does this).
            self.model._initial_epoch = restored.epoch
            return

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a legacy Keras one counts as the oldest)."""
        if not self.dir.is_dir():
            return []
        found = sorted((p for p in self.dir.iterdir() if p.is_dir() and NAME.fullmatch(p.name)),
                       key=lambda p: p.name)
        legacy = self.dir / LEGACY_WEIGHTS
        return ([self.dir] if legacy.exists() else []) + found

    def _restore(self, folder: Path) -> Restored:
        if folder == self.dir:  # Keras's own layout, from an older release
            meta = json.loads((folder / LEGACY_META).read_text())
            weights, name = folder / LEGACY_WEIGHTS, LEGACY_WEIGHTS
        else:
            meta = json.loads((folder / META).read_text())
            weights, name = folder / WEIGHTS, folder.name
        epoch, batch = int(meta["epoch"]), int(meta.get("batch") or 0)
        last_logs = meta.get("last_logs")
        self._load_weights(weights)
        return Restored(name, epoch, batch, last_logs if isinstance(last_logs, dict) else None)

    def _load_weights(self, path: Path) -> None:
        """Load, or leave the model exactly as it was: a file that fails halfway must not
        leave half its weights behind for the next candidate (or the fresh start)."""
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        variables = list(self.model.weights)
        if self.model.optimizer is not None:
            variables += list(self.model.optimizer.variables)
        before = [v.numpy() for v in variables]
        try:
            self.model.load_weights(str(path))
        except BaseException:
            for var, value in zip(variables, before, strict=True):
                var.assign(value)
            raise

    # -- save ------------------------------------------------------------------------------

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch, self._batches = epoch, 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._batches = batch + 1
        self._maybe_hand_back()

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        self._maybe_hand_back()

    def _maybe_hand_back(self) -> None:
        if self.saved_mid_epoch is None and self.hand_back_now():
            self.saved_mid_epoch = self._save(self._epoch, self._batches)
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self.cut_short(epoch) or self.saved_mid_epoch is not None:
            return  # stopped before its end: not a finished epoch
        self._last_logs = clean_logs(logs)
        self._save(epoch + 1, 0)

    def on_train_end(self, logs: Any = None) -> None:
        pass  # kept: the job removes the folder once it has ended

    def _save(self, epoch: int, batch: int) -> str:
        name = f"e{epoch:06d}-b{batch:06d}"
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        self.model.save_weights(str(tmp / WEIGHTS))
        meta = {"epoch": epoch, "batch": batch, "last_logs": self._last_logs}
        (tmp / META).write_text(json.dumps(meta))
        _fsync_folder(tmp, files=(WEIGHTS, META))
        final = self.dir / name
        if final.exists():  # the same state written again (after a resume): replace it
            _remove(final)
        os.replace(tmp, final)
        _fsync_folder(self.dir)
        for old in self.checkpoints()[:-self.keep]:
            for path in ([old / LEGACY_WEIGHTS, old / LEGACY_META] if old == self.dir else [old]):
                _remove(path)
        return name

    def _remove_partial_writes(self) -> None:
        if self.dir.is_dir():
            for leftover in self.dir.glob(f"{TMP_PREFIX}*"):
                _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_folder(folder: Path, files: tuple[str, ...] = ()) -> None:
    """Flush the files and the folder entry, so a rename never publishes data that a crash of
    the host (not only of the process) could still lose."""
    for name in files:
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
