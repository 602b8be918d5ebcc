"""What `Client.fit` returns: Keras's `History` attributes, plus the job behind them."""

from __future__ import annotations

from typing import Any


class History:
    """`history` (metric → per-epoch values; epochs without validation hold None in `val_*`),
    `epoch` (epoch indices), `params` ({"epochs", "steps", "verbose"}) as in Keras, and `job`
    (the job's JSON), `model_name`, `version`, `model_ref` ("name/version") of the version the
    job saved, and `model`: the model `Client.fit` was given, holding the trained weights.
    A job left running after Ctrl-C gives a History of the epochs done so far
    (`done` is False); `Client.attach(history.job["id"])` follows it again."""

    def __init__(self, job: dict[str, Any], params: dict[str, Any]) -> None:
        self.job = job
        from keras_jobs.progress import keras_order

        raw = job.get("history") or {}
        self.history: dict[str, list[float | None]] = {k: list(raw[k])
                                                        for k in keras_order(raw)}
        done = max((len(v) for v in self.history.values()), default=0)
        first = int((job.get("params") or {}).get("initial_epoch") or 0)
        self.epoch = list(range(first, first + done))
        self.params = params
        self.model_name: str | None = job.get("model_name")
        self.version: int | None = job.get("model_version")
        self.model: Any = None  # the model `Client.fit` trained (as Keras's History.model)

    @property
    def status(self) -> str:
        return str(self.job.get("status"))

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    @property
    def model_ref(self) -> str | None:
        if self.model_name is None or self.version is None:
            return None
        return f"{self.model_name}/{self.version}"

    def __repr__(self) -> str:
        last = {k: v[-1] for k, v in self.history.items() if v}
        return (f"<History job={self.job.get('id')} status={self.status} "
                f"model={self.model_ref} epochs={len(self.epoch)} last={last}>")
