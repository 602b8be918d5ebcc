"""Which rows and arrays a fit job trains on, as a unit: selection, stacking, the validation
split and the stream/memory choice. No database, no worker, no Keras."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.core.errors import DomainError
from app.jobs.schemas import FitJobParams
from app.training import data
from app.training.fit_inputs import FitInputs

ARRAYS = {"a": np.arange(10, dtype="float32"), "b": np.arange(10, 20, dtype="float32"),
          "img": np.zeros((10, 2, 2), dtype="float32"), "y": np.arange(10) % 2}


def params(**kw: Any) -> FitJobParams:
    return FitJobParams(type="fit", spec_id="spec_x", dataset_id="ds_x", **kw)


def test_a_list_stacks_columns_and_a_dict_maps_inputs() -> None:
    stacked = data.select(ARRAYS, ["a", "b"], "/x")
    assert isinstance(stacked, np.ndarray) and stacked.shape == (10, 2)
    assert stacked[3].tolist() == [3.0, 13.0]
    mapped = data.select(ARRAYS, {"left": "img", "right": ["a", "b"]}, "/x")
    assert isinstance(mapped, dict)
    assert mapped["left"].shape == (10, 2, 2) and mapped["right"].shape == (10, 2)


def test_unknown_array_points_at_the_selector() -> None:
    with pytest.raises(DomainError) as info:
        data.select(ARRAYS, {"left": ["a", "nope"]}, "/x")
    assert info.value.errors[0].pointer == "/x/left/1"


def test_validation_split_holds_out_the_last_rows_as_keras_does() -> None:
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split

    for n, fraction in [(10, 0.3), (1000, 0.3), (7, 0.5), (2000, 0.1), (33, 0.77)]:
        arrays = {"x": np.arange(n, dtype="float32"), "y": np.arange(n) % 2}
        inputs = FitInputs.from_params(params(validation_split=fraction), arrays, None,
                                       seed=7, stream_threshold_bytes=1 << 30)
        (kx,), (vx,) = train_validation_split((arrays["x"],), fraction)
        assert arrays["x"][inputs.train_rows].tolist() == np.asarray(kx).tolist()
        assert inputs.validation is not None
        assert arrays["x"][inputs.validation[2]].tolist() == np.asarray(vx).tolist()


def test_params_of_an_older_release_keep_the_shuffled_split() -> None:
    from app.jobs.schemas import parse_params

    old = params(validation_split=0.3).model_dump(mode="json")
    del old["validation_split_shuffled"]  # rows written before the option existed
    upgraded = parse_params(old)
    assert isinstance(upgraded, FitJobParams)
    assert (upgraded.validation_split, upgraded.validation_split_shuffled) == (None, 0.3)
    new = parse_params(params(validation_split=0.3).model_dump(mode="json"))
    assert isinstance(new, FitJobParams) and new.validation_split == 0.3


def test_validation_split_shuffled_is_a_seeded_permutation() -> None:
    inputs = FitInputs.from_params(params(x=["a", "b"], y="y", validation_split_shuffled=0.3),
                                   ARRAYS, None, seed=7, stream_threshold_bytes=1 << 30)
    order = np.random.default_rng(7).permutation(10)
    assert inputs.train_rows.tolist() == order[:7].tolist()  # ceil(10 * 0.7) = 7
    assert inputs.validation is not None
    assert inputs.validation[2].tolist() == order[7:].tolist()
    assert not inputs.streaming


def test_validation_dataset_and_sample_weight() -> None:
    other = {k: v[:4] for k, v in ARRAYS.items()}
    inputs = FitInputs.from_params(params(x="a", y="y", sample_weight="b",
                                          validation_dataset_id="ds_v"),
                                   ARRAYS, other, seed=0, stream_threshold_bytes=1 << 30)
    assert inputs.train_rows.tolist() == list(range(10))
    assert inputs.sample_weight is not None and inputs.sample_weight[0] == 10
    assert inputs.validation is not None and inputs.validation[2].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("mode", "threshold", "streaming"), [
    ("auto", 1 << 30, False), ("auto", 10, True), ("stream", 1 << 30, True),
    ("memory", 10, False)])
def test_stream_or_memory(mode: str, threshold: int, streaming: bool) -> None:
    inputs = FitInputs.from_params(params(x="a", y="y", input=mode), ARRAYS, None, seed=0,
                                   stream_threshold_bytes=threshold)
    assert inputs.streaming is streaming


def test_a_split_that_leaves_no_rows_is_refused() -> None:
    with pytest.raises(DomainError) as info:
        data.split_index(2, 0.01, seed=0)
    assert info.value.errors[0].pointer == "/validation_split_shuffled"
    with pytest.raises(DomainError) as info:
        data.last_rows_split(2, 0.6)
    assert info.value.errors[0].pointer == "/validation_split"
