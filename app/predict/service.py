from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.storage import ArtifactStore
from app.predict.cache import ServableCache
from app.predict.codec import decode, encode
from app.registry import service as registry

MODEL_FILE = "model.keras"


@lru_cache
def get_cache() -> ServableCache:
    return ServableCache(get_settings().model_cache_size)


def predict(session: Session, store: ArtifactStore, owner: str, name: str, version: int | None,
            body: Any) -> dict[str, Any]:
    mv = registry.resolve(session, owner, name, version)
    servable = get_cache().get(mv.id, store.path(mv.artifact_key) / MODEL_FILE)
    arrays, fmt = decode(body, servable.inputs)
    return encode(servable(arrays), servable.outputs, fmt)


def metadata(session: Session, store: ArtifactStore, owner: str, name: str,
             version: int | None) -> dict[str, Any]:
    mv = registry.resolve(session, owner, name, version)
    servable = get_cache().get(mv.id, store.path(mv.artifact_key) / MODEL_FILE)
    return {"name": mv.name, "version": mv.version,
            "inputs": [i.as_dict() for i in servable.inputs],
            "outputs": [o.as_dict() for o in servable.outputs]}
