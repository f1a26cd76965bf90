"""Pipeline use cases against the real core and store: versions, states per §8, modelsReady following
the models, validation that changes nothing, persistence. Engines are played in-process here
(their sessions); tests/scheduler/test_pipeline_api.py has one over real gRPC."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from apis.mlops.chainer import chainer_pb2
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource
from scheduler.dataflow import CREATE, DELETE, EngineSession
from scheduler.pipeline_records import PipelineStatus, decode_pipeline, encode_pipeline, pipeline_status
from scheduler.pipelines import CREATED, PIPELINES, PipelineNotFound, Pipelines
from scheduler.store import StateStore
from scheduler.store_schema import MIGRATIONS, SCHEMA_VERSION
from tests.scheduler.fakes import Harness, model
from tests.scheduler.test_store import _schema_version, _v1_database, sample_models, sample_servers

S = PipelineStatus
Step = scheduler_pb2.PipelineStep


def chain(
    name: str = "tfsimples", *, second_input: str = "tfsimple1", **fields: Any
) -> scheduler_pb2.Pipeline:
    return scheduler_pb2.Pipeline(
        name=name,
        steps=[
            Step(name="tfsimple1"),
            Step(
                name="tfsimple2",
                inputs=[second_input],
                tensorMap={"tfsimple1.outputs.OUTPUT0": "INPUT0", "tfsimple1.outputs.OUTPUT1": "INPUT1"},
            ),
        ],
        output=scheduler_pb2.PipelineOutput(steps=["tfsimple2"]),
        **fields,
    )


def drain(session: EngineSession) -> list[tuple[str, int, int]]:
    """What the engine was sent and not yet read, as (pipeline, op, version)."""
    sent: list[tuple[str, int, int]] = []
    while session._outbox:
        message = session._outbox.pop(next(iter(session._outbox)))
        sent.append((message.pipeline, message.op, message.version))
    return sent


def answer(
    pipelines: Pipelines,
    engine: str,
    name: str,
    version: int,
    *,
    op: int = CREATE,
    ok: bool = True,
    reason: str = "",
) -> None:
    uid = pipelines.records[name].versions[-1].pipeline.uid
    for v in pipelines.records[name].versions:
        if v.number == version:
            uid = v.pipeline.uid
    update = chainer_pb2.PipelineUpdateMessage(op=op, pipeline=name, version=version, uid=uid, stream=engine)  # type: ignore[arg-type]
    pipelines.engine_answered(
        chainer_pb2.PipelineUpdateStatusMessage(update=update, success=ok, reason=reason)
    )


def state(pipelines: Pipelines, name: str, version: int | None = None) -> tuple[PipelineStatus, str, bool]:
    record = pipelines.records[name]
    found = record.latest if version is None else next(v for v in record.versions if v.number == version)
    return found.status, found.reason, found.models_ready


async def models_available(harness: Harness, *names: str) -> None:
    for name in names:
        await harness.load(model(name))
        await harness.make_available(name)


# -- states and readiness ----------------------------------------------------------------------------


async def test_a_pipeline_loaded_before_its_models_becomes_models_ready_when_they_are(
    harness: Harness,
) -> None:
    pipelines = harness.pipelines
    version = pipelines.load(chain())
    assert (version.number, len(version.pipeline.uid)) == (1, 20)
    assert state(pipelines, "tfsimples") == (
        S.PipelineCreate,
        "waiting for a dataflow engine to subscribe",
        False,
    )
    await harness.connect()
    await models_available(harness, "tfsimple1")
    assert not state(pipelines, "tfsimples")[2], "one model of two is not enough"
    await models_available(harness, "tfsimple2")
    assert state(pipelines, "tfsimples")[2]
    assert not pipelines.ready("tfsimples"), "no dataflow engine runs it yet"

    engine = pipelines.engine_subscribed("engine-0")
    assert drain(engine) == [("tfsimples", CREATE, 1)]
    assert state(pipelines, "tfsimples")[0] is S.PipelineCreating
    answer(pipelines, "engine-0", "tfsimples", 1)
    assert state(pipelines, "tfsimples") == (S.PipelineReady, CREATED, True)
    assert pipelines.ready("tfsimples")

    await harness.unload("tfsimple2")
    assert state(pipelines, "tfsimples") == (S.PipelineReady, CREATED, False)
    assert not pipelines.ready("tfsimples")
    response = pipeline_status(pipelines.records["tfsimples"], all_versions=False)
    shown = response.versions[0].state
    assert (shown.status, shown.reason, shown.modelsReady) == (
        scheduler_pb2.PipelineVersionState.PipelineReady,
        CREATED,
        False,
    )


async def test_a_model_change_refreshes_only_the_pipelines_whose_latest_version_calls_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipelines = harness.pipelines
    pipelines.load(chain("first"))
    pipelines.load(scheduler_pb2.Pipeline(name="other", steps=[Step(name="unrelated")]))
    refreshed: list[str] = []
    refresh = pipelines._refresh

    def spy(record: Any, **options: Any) -> None:
        refreshed.append(record.name)
        refresh(record, **options)

    monkeypatch.setattr(pipelines, "_refresh", spy)
    await harness.connect()
    await models_available(harness, "tfsimple1")
    assert set(refreshed) == {"first"}
    pipelines.load(scheduler_pb2.Pipeline(name="first", steps=[Step(name="tfsimple1")]))
    refreshed.clear()
    await models_available(harness, "tfsimple2")
    assert refreshed == [], "version 2 no longer calls tfsimple2"
    assert state(pipelines, "first")[2]


async def test_versions_same_spec_same_version_new_spec_new_version_old_one_replaced_once_ready(
    harness: Harness,
) -> None:
    pipelines = harness.pipelines
    engine = pipelines.engine_subscribed("engine-0")
    first = pipelines.load(chain())
    answer(pipelines, "engine-0", "tfsimples", 1)
    assert pipelines.load(chain()) is first, "applying the same spec again changes nothing"
    assert drain(engine) == [("tfsimples", CREATE, 1)]

    second = pipelines.load(chain(second_input="tfsimple1.outputs", allowCycles=True))
    assert (second.number, second.pipeline.uid != first.pipeline.uid) == (2, True)
    assert drain(engine) == [("tfsimples", CREATE, 2)]
    assert state(pipelines, "tfsimples", 1)[0] is S.PipelineReady, "v1 runs until v2 does"
    assert state(pipelines, "tfsimples", 2)[0] is S.PipelineCreating
    answer(pipelines, "engine-0", "tfsimples", 1)  # a stale answer about v1 changes nothing
    assert state(pipelines, "tfsimples", 2)[0] is S.PipelineCreating
    answer(pipelines, "engine-0", "tfsimples", 2)
    assert state(pipelines, "tfsimples", 2)[:2] == (S.PipelineReady, CREATED)
    assert state(pipelines, "tfsimples", 1)[:2] == (S.PipelineTerminated, "replaced by version 2")
    status = pipeline_status(pipelines.records["tfsimples"], all_versions=True)
    assert [v.state.pipelineVersion for v in status.versions] == [1, 2]
    assert [v.pipeline.version for v in status.versions] == [1, 2]
    latest = pipeline_status(pipelines.records["tfsimples"], all_versions=False)
    assert [v.pipeline.version for v in latest.versions] == [2]


async def test_a_failure_is_reported_with_its_reason_and_applying_again_retries(harness: Harness) -> None:
    pipelines = harness.pipelines
    engine = pipelines.engine_subscribed("engine-0")
    pipelines.load(chain())
    answer(pipelines, "engine-0", "tfsimples", 1, ok=False, reason="topic create failed")
    assert state(pipelines, "tfsimples")[:2] == (
        S.PipelineFailed,
        "dataflow engine failed to start it: engine-0: topic create failed",
    )
    drain(engine)
    pipelines.load(chain())
    assert drain(engine) == [("tfsimples", CREATE, 1)]
    assert state(pipelines, "tfsimples")[0] is S.PipelineCreating
    answer(pipelines, "engine-0", "tfsimples", 1)
    assert state(pipelines, "tfsimples")[0] is S.PipelineReady


async def test_the_owner_must_confirm_and_engines_leaving_or_coming_move_the_state(
    harness: Harness,
) -> None:
    pipelines = harness.pipelines
    pipelines.load(chain())
    a = pipelines.engine_subscribed("engine-a")
    owner = pipelines.placement.owners("tfsimples")[0]
    assert owner == "engine-a" and drain(a) == [("tfsimples", CREATE, 1)]
    answer(pipelines, "engine-a", "tfsimples", 1)
    assert state(pipelines, "tfsimples")[0] is S.PipelineReady
    pipelines.engines.unsubscribe(a)
    assert state(pipelines, "tfsimples")[0] is S.PipelineCreate
    again = pipelines.engine_subscribed("engine-a")  # a new stream starts from scratch
    assert drain(again) == [("tfsimples", CREATE, 1)]
    assert state(pipelines, "tfsimples")[0] is S.PipelineCreating
    answer(pipelines, "engine-x", "tfsimples", 1)  # not subscribed: ignored
    assert state(pipelines, "tfsimples")[0] is S.PipelineCreating


async def test_an_engine_reconnecting_under_its_name_replaces_its_old_stream(harness: Harness) -> None:
    pipelines = harness.pipelines
    old = pipelines.engine_subscribed("engine-0")
    new = pipelines.engine_subscribed("engine-0")
    assert old.closed and await old.next() is None
    assert pipelines.engines.sessions == {"engine-0": new}
    pipelines.engines.unsubscribe(old)  # the old stream ending later does not remove the new one
    assert pipelines.engines.sessions == {"engine-0": new}


async def test_unload_terminates_through_the_engines_and_the_status_stays_queryable(harness: Harness) -> None:
    pipelines = harness.pipelines
    engine = pipelines.engine_subscribed("engine-0")
    pipelines.load(chain())
    answer(pipelines, "engine-0", "tfsimples", 1)
    drain(engine)
    pipelines.unload("tfsimples")
    assert drain(engine) == [("tfsimples", DELETE, 1)]
    assert state(pipelines, "tfsimples")[:2] == (
        S.PipelineTerminating,
        "waiting for dataflow engines engine-0",
    )
    answer(pipelines, "engine-0", "tfsimples", 1, op=DELETE)
    assert state(pipelines, "tfsimples")[:2] == (S.PipelineTerminated, "pipeline removed")
    assert pipeline_status(pipelines.get("tfsimples"), all_versions=False).operation == (
        scheduler_pb2.PipelineStatusResponse.PipelineDelete
    )
    with pytest.raises(PipelineNotFound, match="unloaded already"):
        pipelines.unload("tfsimples")
    again = pipelines.load(chain())  # loading it again is a new version, even with the same spec
    assert again.number == 2 and not pipelines.records["tfsimples"].deleted
    assert drain(engine) == [("tfsimples", CREATE, 2)]


async def test_unload_without_engines_terminates_at_once_and_unknown_names_are_not_found(
    harness: Harness,
) -> None:
    pipelines = harness.pipelines
    pipelines.load(chain())
    pipelines.unload("tfsimples")
    assert state(pipelines, "tfsimples")[0] is S.PipelineTerminated
    with pytest.raises(PipelineNotFound, match="pipeline nope not found"):
        pipelines.unload("nope")
    with pytest.raises(InvalidResource):
        pipelines.get("Not_A_Name")


async def test_status_listeners_hear_each_change(harness: Harness) -> None:
    heard: list[str] = []
    harness.pipelines.on_change(heard.append)
    harness.pipelines.load(chain())
    harness.pipelines.load(chain())  # unchanged: nothing to hear
    assert heard == ["tfsimples"]
    harness.pipelines.unload("tfsimples")
    assert heard == ["tfsimples", "tfsimples"]


async def test_unloading_while_a_new_version_starts_terminates_every_version(harness: Harness) -> None:
    pipelines = harness.pipelines
    pipelines.engine_subscribed("engine-0")
    pipelines.load(chain())
    answer(pipelines, "engine-0", "tfsimples", 1)
    pipelines.load(chain(allowCycles=True))  # version 2, not confirmed yet
    pipelines.unload("tfsimples")
    answer(pipelines, "engine-0", "tfsimples", 2, op=DELETE)
    assert state(pipelines, "tfsimples", 1)[:2] == (S.PipelineTerminated, "pipeline removed")
    assert state(pipelines, "tfsimples", 2)[:2] == (S.PipelineTerminated, "pipeline removed")


async def test_answers_about_unknown_pipelines_are_ignored(harness: Harness) -> None:
    engine = harness.pipelines.engine_subscribed("engine-0")
    update = chainer_pb2.PipelineUpdateMessage(op=CREATE, pipeline="ghost", version=1, stream="engine-0")
    harness.pipelines.engine_answered(chainer_pb2.PipelineUpdateStatusMessage(update=update, success=True))
    assert engine.results == {} and harness.pipelines.records == {}


async def test_an_engine_answer_without_its_update_is_refused(harness: Harness) -> None:
    harness.pipelines.engine_subscribed("engine-0")
    bad = chainer_pb2.PipelineUpdateStatusMessage(
        update=chainer_pb2.PipelineUpdateMessage(stream="engine-0"), success=True
    )
    with pytest.raises(InvalidResource, match="must carry the update"):
        harness.pipelines.engine_answered(bad)


# -- validation: each refused with a reason, nothing changed ---------------------------------------


BAD = [
    pytest.param(
        chain(second_input="tfsimple9"),
        "names step tfsimple9, which the pipeline does not have",
        id="unknown-step",
    ),
    pytest.param(
        chain(second_input="tfsimple1.outputs.OUTPUT7"),
        "matches none of the inputs",
        id="unknown-tensor-reference",
    ),
    pytest.param(chain(second_input="tfsimple1.sideways"), "tfsimple1.sideways", id="bad-reference-syntax"),
    pytest.param(chain(second_input="tfsimple1..x"), "tfsimple1..x", id="empty-reference-part"),
    pytest.param(
        scheduler_pb2.Pipeline(
            name="loop",
            steps=[Step(name="a", inputs=["b"]), Step(name="b", inputs=["a"])],
        ),
        "has a cycle",
        id="cycle-without-allowCycles",
    ),
    pytest.param(
        scheduler_pb2.Pipeline(
            name="p", steps=[Step(name="a")], output=scheduler_pb2.PipelineOutput(steps=["zz"])
        ),
        "names step zz",
        id="unknown-output-step",
    ),
    pytest.param(
        scheduler_pb2.Pipeline(name="p", steps=[Step(name="a", triggers=["ghost.outputs.ok"])]),
        "names step ghost",
        id="unknown-trigger-step",
    ),
    pytest.param(scheduler_pb2.Pipeline(name="p"), "has no steps", id="no-steps"),
    pytest.param(scheduler_pb2.Pipeline(name="Bad_Name", steps=[Step(name="a")]), "Bad_Name", id="bad-name"),
]


@pytest.mark.parametrize(("bad", "says"), BAD)
async def test_invalid_pipelines_are_refused_and_change_nothing(
    harness: Harness, bad: scheduler_pb2.Pipeline, says: str
) -> None:
    pipelines = harness.pipelines
    engine = pipelines.engine_subscribed("engine-0")
    pipelines.load(chain())
    pipelines.load(scheduler_pb2.Pipeline(name="loop", steps=[Step(name="a")]))
    drain(engine)
    before = {name: encode_pipeline(record) for name, record in pipelines.records.items()}
    with pytest.raises(InvalidResource, match=says):
        pipelines.load(bad)
    assert {name: encode_pipeline(record) for name, record in pipelines.records.items()} == before
    assert drain(engine) == []


# -- persistence ----------------------------------------------------------------------------------------


async def test_pipelines_are_persisted_and_restored_with_versions_uids_and_unloads(tmp_path: Path) -> None:
    first = Harness(store_path=tmp_path / "state.db")
    first.pipelines.engine_subscribed("engine-0")
    v1 = first.pipelines.load(chain())
    answer(first.pipelines, "engine-0", "tfsimples", 1)
    v2 = first.pipelines.load(
        chain(second_input="tfsimple1.outputs", dataflowSpec={"cleanTopicsOnDelete": True})
    )
    first.pipelines.load(scheduler_pb2.Pipeline(name="gone", steps=[Step(name="a")]))
    first.pipelines.unload("gone")
    first.scheduler.commit()
    first.pipelines.engines.close()
    await first.scheduler.close()

    second = Harness(store_path=tmp_path / "state.db")
    second.scheduler.restore()
    second.pipelines.restore()
    record = second.pipelines.records["tfsimples"]
    assert [(v.number, v.pipeline.uid) for v in record.versions] == [
        (1, v1.pipeline.uid),
        (2, v2.pipeline.uid),
    ]
    assert record.latest.pipeline == v2.pipeline and record.latest.pipeline.clean_topics_on_delete
    assert state(second.pipelines, "tfsimples", 1)[:2] == (S.PipelineTerminated, "replaced by version 2")
    assert state(second.pipelines, "tfsimples")[0] is S.PipelineCreate, (
        "no engine runs anything after a restart"
    )
    assert second.pipelines.records["gone"].deleted
    assert state(second.pipelines, "gone")[0] is S.PipelineTerminated
    engine = second.pipelines.engine_subscribed("engine-0")
    assert drain(engine) == [("tfsimples", CREATE, 2)], "only live pipelines are sent"
    await second.connect()
    await models_available(second, "tfsimple1", "tfsimple2")
    assert state(second.pipelines, "tfsimples")[2], "a restored pipeline follows its models"
    second.pipelines.engines.close()
    await second.scheduler.close()


def test_a_schema_2_database_gains_the_pipelines_table_and_restores_unchanged(tmp_path: Path) -> None:
    path = _v1_database(tmp_path)
    StateStore(path, migrations=MIGRATIONS[:2]).close()  # what the previous meshserve left
    assert _schema_version(path) == 2
    store = StateStore(path)
    try:
        store.register(PIPELINES, dict)
        assert store.load_kind(PIPELINES) == {}
        assert store.load() == (sample_models(), sample_servers())
    finally:
        store.close()
    assert _schema_version(path) == SCHEMA_VERSION == 3
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM pipelines").fetchone() == (0,)


def test_a_damaged_record_is_refused() -> None:
    with pytest.raises(ValueError, match="names 'other'"):
        decode_pipeline("p", encode_pipeline_named("other"))


def encode_pipeline_named(name: str) -> str:
    import base64

    message = scheduler_pb2.PipelineStatusResponse(pipelineName=name)
    return base64.b64encode(message.SerializeToString()).decode("ascii")


async def test_at_the_limit_the_oldest_unloaded_pipeline_makes_room_else_loads_are_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduler import pipelines as module

    monkeypatch.setattr(module, "MAX_PIPELINES", 2)
    pipelines = harness.pipelines
    heard: list[str] = []
    pipelines.on_change(heard.append)
    pipelines.load(chain("one"))
    pipelines.load(chain("two"))
    with pytest.raises(InvalidResource, match="2 pipelines are loaded already"):
        pipelines.load(chain("three"))
    assert set(pipelines.records) == {"one", "two"}
    pipelines.unload("one")
    assert pipelines.load(chain("two", allowCycles=True)).number == 2  # a new version: no room needed
    pipelines.load(chain("three"))
    assert set(pipelines.records) == {"two", "three"}
    assert heard.count("one") == 3  # loaded, unloaded, forgotten


def test_a_record_with_versions_out_of_order_is_refused() -> None:
    import base64

    item = pipeline_status(record_of(), all_versions=True)
    item.versions.extend([item.versions[0]])  # version 1 twice
    text = base64.b64encode(item.SerializeToString()).decode("ascii")
    with pytest.raises(ValueError, match="not increasing"):
        decode_pipeline("p", text)


def record_of() -> Any:
    from pipelines.model import Pipeline
    from scheduler.pipeline_records import PipelineRecord, PipelineVersion

    spec = Pipeline.from_proto(scheduler_pb2.Pipeline(name="p", version=1, steps=[Step(name="a")]))
    return PipelineRecord("p", [PipelineVersion(spec)])
