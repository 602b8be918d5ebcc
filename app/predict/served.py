"""This process's serving as the model routes (app/registry/router.py, `Served`) show and change
it: a version's TF Serving status, warming a version before a label moves to it, forgetting a
deleted one, and a model's batching settings."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.predict.service import (
    Ref,
    get_serving,
    loaded_model,
    serving_settings,
    set_serving_settings,
)
from app.registry.schemas import ServingSettings, VersionStatus

_OK = {"error_code": "OK", "error_message": ""}


class ServedModels:
    def status(self, version_id: str, version: int) -> VersionStatus:
        """AVAILABLE: loaded here, or loads on the first request; LOADING: being loaded by
        this process now; UNAVAILABLE: its last load here failed (with the reason)."""
        cache = get_serving().cache
        failure = cache.stats.failures.get(version_id)
        if cache.loading(version_id):
            return VersionStatus(version=str(version), state="LOADING", status=dict(_OK))
        if failure is not None:
            return VersionStatus(version=str(version), state="UNAVAILABLE",
                                 status={"error_code": "UNKNOWN", "error_message": failure})
        return VersionStatus(version=str(version), state="AVAILABLE", status=dict(_OK))

    async def warm(self, owner: str, name: str, version: int) -> None:
        await loaded_model(Ref(owner, name, version=version))

    def forget(self, version_id: str) -> None:
        get_serving().cache.drop(version_id)

    def settings(self, session: Session, owner: str, name: str) -> ServingSettings:
        return serving_settings(session, owner, name)

    def set_settings(self, session: Session, owner: str, name: str,
                     settings: ServingSettings, *, actor: str) -> ServingSettings:
        return set_serving_settings(session, owner, name, settings, actor=actor)
