"""`Job.params` round-trips through the API's models, and a stored row that no longer fits
them fails with the reason rather than a KeyError deep in the worker."""

from __future__ import annotations

import pytest

from app.core.errors import DomainError
from app.jobs.schemas import EvaluateJobParams, FitJobCreate, FitJobParams, parse_params


def test_fit_params_round_trip_with_resolved_fields() -> None:
    body = FitJobCreate(type="fit", from_model="m/2", dataset_id="ds_1", epochs=3,
                        callbacks=[{"type": "EarlyStopping", "patience": 2}],  # type: ignore[list-item]
                        keep_best={"monitor": "val_loss"})  # type: ignore[arg-type]
    stored = FitJobParams(**body.model_dump(), from_model_version_id="mv_1").model_dump(
        mode="json")
    params = parse_params(stored)
    assert isinstance(params, FitJobParams)
    assert params.from_model_version_id == "mv_1" and params.epochs == 3
    assert params.callbacks[0].model_dump() == {"type": "EarlyStopping", "patience": 2}
    assert params.keep_best is not None and params.keep_best.mode == "auto"


def test_evaluate_params_need_the_resolved_version() -> None:
    params = parse_params({"type": "evaluate", "model": "m", "dataset_id": "ds_1",
                           "model_version_id": "mv_9"})
    assert isinstance(params, EvaluateJobParams) and params.model_version_id == "mv_9"
    with pytest.raises(DomainError) as info:
        parse_params({"type": "evaluate", "model": "m", "dataset_id": "ds_1"})
    assert info.value.status == 422 and "model_version_id" in info.value.detail


@pytest.mark.parametrize("stored", [
    {"type": "fit", "dataset_id": "ds_1", "epocs": 3},           # a misspelt key
    {"type": "fit", "dataset_id": "ds_1", "epochs": "many"},     # a wrong type
    {"type": "train", "dataset_id": "ds_1"},                     # an unknown job type
])
def test_a_row_that_no_longer_validates_fails_clearly(stored: dict[str, object]) -> None:
    with pytest.raises(DomainError) as info:
        parse_params(stored)
    assert "stored parameters" in info.value.detail
