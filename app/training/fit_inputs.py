"""What a fit job trains on: the selected arrays, the training/validation rows, and whether
batches are streamed from the memory-mapped files or the arrays are loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.jobs.schemas import FitJobParams
from app.training import data, stream


@dataclass(frozen=True)
class FitInputs:
    x: data.Selected
    y: data.Selected
    sample_weight: np.ndarray | None
    train_rows: np.ndarray
    # (x, y, rows) of the validation data: held-out rows of x/y, or another dataset.
    validation: tuple[data.Selected, data.Selected, np.ndarray] | None
    streaming: bool

    @classmethod
    def from_params(cls, params: FitJobParams, arrays: data.Arrays,
                    validation_arrays: data.Arrays | None, seed: int,
                    stream_threshold_bytes: int) -> FitInputs:
        x = data.select(arrays, params.x, "/x")
        y = data.select(arrays, params.y, "/y")
        sw = (data.select(arrays, params.sample_weight, "/sample_weight")
              if params.sample_weight else None)
        assert sw is None or isinstance(sw, np.ndarray)
        train_rows = np.arange(data.rows(x))
        validation = None
        if params.validation_split:  # Keras's: the last rows
            train_rows, val_rows = data.last_rows_split(len(train_rows),
                                                        params.validation_split)
            validation = (x, y, val_rows)
        elif params.validation_split_shuffled:
            train_rows, val_rows = data.split_index(len(train_rows),
                                                    params.validation_split_shuffled, seed)
            validation = (x, y, val_rows)
        elif validation_arrays is not None:
            xv = data.select(validation_arrays, params.x, "/x")
            validation = (xv, data.select(validation_arrays, params.y, "/y"),
                          np.arange(data.rows(xv)))
        mode = params.input
        size = stream.nbytes(x, y, *([sw] if sw is not None else []))
        streaming = mode == "stream" or (mode == "auto" and size > stream_threshold_bytes)
        return cls(x, y, sw, train_rows, validation, streaming)

    def adapt_source(self) -> Any:
        """The training rows of x, as adapt() should read them."""
        if self.streaming:
            return stream.per_input(self.x, self.train_rows)
        return data.in_memory(data.take(self.x, self.train_rows))

    def fit(self, model: Any, *, batch_size: int, shuffle: bool, seed: int,
            **fit_kwargs: Any) -> None:
        """model.fit on these inputs; `fit_kwargs` are the options both paths share."""
        if self.streaming:
            parts = (self.x, self.y) if self.sample_weight is None else (
                self.x, self.y, self.sample_weight)
            train = stream.dataset(parts, self.train_rows, batch_size, shuffle, seed,
                                   repeat=fit_kwargs.get("steps_per_epoch") is not None)
            val = (stream.dataset(self.validation[:2], self.validation[2], batch_size, False,
                                  seed) if self.validation else None)
            model.fit(train, validation_data=val, **fit_kwargs)
            return

        def rows(selected: Any, index: np.ndarray) -> Any:
            return data.in_memory(data.take(selected, index))

        val = self.validation
        model.fit(rows(self.x, self.train_rows), rows(self.y, self.train_rows),
                  batch_size=batch_size, shuffle=shuffle,
                  sample_weight=(None if self.sample_weight is None
                                 else rows(self.sample_weight, self.train_rows)),
                  validation_data=(rows(val[0], val[2]), rows(val[1], val[2])) if val else None,
                  **fit_kwargs)
