"""Python client for a keras-jobs service: `model.fit` on a worker with one call (the model as
it is, weights and state included), watch it learn, get a History back and the trained
weights in the model.

    from keras_jobs import Client
    client = Client("http://127.0.0.1:8000")
    history = client.fit(model, x, y, epochs=5, validation_split=0.2)

It talks HTTP only (httpx) and imports NumPy, Keras and tqdm when a call needs them."""

from __future__ import annotations

from keras_jobs.client import Client
from keras_jobs.errors import KerasJobsError
from keras_jobs.history import History

__version__ = "0.1.0"
__all__ = ["Client", "History", "KerasJobsError", "__version__"]
