"""Serving: a registry version, loaded once per process, answers TensorFlow Serving requests."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.storage import ArtifactStore
from app.predict.cache import ServableCache
from app.predict.codec import decode, encode
from app.predict.servable import Servable
from app.registry import service as registry


@lru_cache
def get_cache() -> ServableCache:
    return ServableCache(get_settings().model_cache_size)


def _servable(session: Session, store: ArtifactStore, owner: str, name: str,
              version: int | None) -> tuple[Any, Servable]:
    mv = registry.resolve(session, owner, name, version)
    return mv, get_cache().get(mv.id, store.model_file(store.path(mv.artifact_key)))


def predict(session: Session, store: ArtifactStore, owner: str, name: str, version: int | None,
            body: Any) -> bytes:
    _mv, servable = _servable(session, store, owner, name, version)
    arrays, fmt = decode(body, servable.inputs)
    return encode(servable(arrays), servable.outputs, fmt)


def metadata(session: Session, store: ArtifactStore, owner: str, name: str,
             version: int | None) -> dict[str, Any]:
    mv, servable = _servable(session, store, owner, name, version)
    return {"name": mv.name, "version": mv.version,
            "inputs": [i.as_dict() for i in servable.inputs],
            "outputs": [o.as_dict() for o in servable.outputs]}
