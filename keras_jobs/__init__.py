"""Python client for a keras-jobs service: send a Keras model built in a notebook to a worker
with one call, watch it learn, get a History back.

    from keras_jobs import Client
    client = Client("http://127.0.0.1:8000")
    history = client.fit(model, x, y, epochs=5, batch_size=16, validation_split=0.3)

It talks HTTP only (httpx) and imports NumPy, Keras and tqdm when a call needs them."""

from __future__ import annotations

from keras_jobs.client import Client
from keras_jobs.errors import KerasJobsError
from keras_jobs.history import History

__version__ = "0.1.0"
__all__ = ["Client", "History", "KerasJobsError", "__version__"]
