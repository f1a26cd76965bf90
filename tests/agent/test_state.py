from __future__ import annotations

import pytest

from agent.state import ReplicaState, versioned_name
from tests.agent.agent_protos import model_version


@pytest.mark.parametrize(
    ("memory", "overcommit", "costs", "expected"),
    [
        (1000, 0, [], 1000),
        (1000, 0, [300, 200], 500),
        (1000, 50, [300], 1200),
        (1000, 50, [800, 500], 200),
        (1000, 0, [800, 500], 0),
        (1000, 0, [None], 1000),
    ],
)
def test_available_memory(memory: int, overcommit: int, costs: list[int | None], expected: int) -> None:
    state = ReplicaState(memory_bytes=memory, overcommit_percentage=overcommit)
    for index, cost in enumerate(costs):
        state.add(model_version(f"m{index}", 1, "/x", memory_bytes=cost))
    assert state.available_bytes() == expected


def test_a_model_added_again_with_another_size_is_counted_once_at_its_new_size() -> None:
    # The free memory is kept as models come and go (every event reports it), not summed each time.
    state = ReplicaState(memory_bytes=1000, overcommit_percentage=0)
    state.add(model_version("iris", 1, "/x", memory_bytes=100))
    state.add(model_version("iris", 1, "/x", memory_bytes=300))
    state.add(model_version("wine", 1, "/x", memory_bytes=200))
    assert state.available_bytes() == 500
    state.set_evicted("wine_1")  # evicted models stay assigned: still counted
    assert state.available_bytes() == 500
    state.remove("iris_1")
    state.remove("iris_1")
    assert state.available_bytes() == 800


def test_add_and_remove() -> None:
    state = ReplicaState(memory_bytes=1000, overcommit_percentage=0)
    iris = model_version("iris", 2, "/x", memory_bytes=100)
    state.add(iris)
    assert versioned_name(iris) == "iris_2"
    assert "iris_2" in state
    assert state.loaded_models() == [iris]
    assert state.remove("iris_2") == iris
    assert state.remove("iris_2") is None
    assert state.available_bytes() == 1000
