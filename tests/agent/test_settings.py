from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ModelSettingsError
from agent.settings import callback_extra, generate_settings, rewrite_settings, write_model_settings
from apis.mlops.scheduler import scheduler_pb2


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"placeholder")


@pytest.mark.parametrize(
    ("requirement", "files", "implementation", "uri"),
    [
        ("sklearn", ["README.md", "b.pkl", "a.joblib"], "mlserver_sklearn.SKLearnModel", "./a.joblib"),
        ("sklearn", ["model.pickle"], "mlserver_sklearn.SKLearnModel", "./model.pickle"),
        ("xgboost", ["model.bst"], "mlserver_xgboost.XGBoostModel", "./model.bst"),
        ("xgboost", ["model.json"], "mlserver_xgboost.XGBoostModel", "./model.json"),
        ("lightgbm", ["model.bst"], "mlserver_lightgbm.LightGBMModel", "./model.bst"),
        ("mlflow", ["MLmodel"], "mlserver_mlflow.MLflowRuntime", "./"),
        ("alibi-detect", ["x"], "mlserver_alibi_detect.AlibiDetectRuntime", "./"),
    ],
)
def test_generated_from_requirement(
    tmp_path: Path, requirement: str, files: list[str], implementation: str, uri: str
) -> None:
    touch(tmp_path, *files)
    settings = generate_settings(tmp_path, [requirement])
    assert settings == {"implementation": implementation, "parameters": {"uri": uri}}


def test_alibi_explain_uses_first_subfolder(tmp_path: Path) -> None:
    (tmp_path / "explainer").mkdir()
    settings = generate_settings(tmp_path, ["alibi-explain"])
    assert settings["implementation"] == "mlserver_alibi_explain.AlibiExplainRuntime"
    assert settings["parallel_workers"] == 0
    assert settings["parameters"] == {"uri": "./explainer"}


def test_python_scans_for_mlmodel_class(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("class Helper:\n    pass\n")
    source = "from mlserver import MLModel\n\nclass EchoModel(MLModel):\n    pass\n"
    (tmp_path / "model.py").write_text(source)
    settings = generate_settings(tmp_path, ["python"])
    assert settings == {"implementation": "model.EchoModel", "parameters": {"uri": "./model.py"}}


def test_first_recognised_requirement_wins(tmp_path: Path) -> None:
    touch(tmp_path, "model.bst", "model.joblib")
    settings = generate_settings(tmp_path, ["mlserver", "xgboost", "sklearn"])
    assert settings["implementation"] == "mlserver_xgboost.XGBoostModel"


def test_no_recognised_requirement(tmp_path: Path) -> None:
    touch(tmp_path, "model.joblib")
    with pytest.raises(ModelSettingsError, match="none of the requirements"):
        generate_settings(tmp_path, ["mlserver", "tensorflow"])


def test_requirement_without_matching_file(tmp_path: Path) -> None:
    touch(tmp_path, "model.onnx")
    with pytest.raises(ModelSettingsError, match=r"\*\.joblib"):
        generate_settings(tmp_path, ["sklearn"])


def test_python_without_mlmodel(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("class Plain:\n    pass\n")
    with pytest.raises(ModelSettingsError, match="MLModel"):
        generate_settings(tmp_path, ["python"])


def test_rewrite_sets_name_version_and_extra() -> None:
    original = {
        "name": "whatever",
        "implementation": "x.Y",
        "parameters": {"uri": "./m", "version": "v9", "extra": {"keep": "me", "a": "old"}},
    }
    rewritten = rewrite_settings(original, versioned_name="iris_3", version=3, extra={"a": "1", "b": "2"})
    assert rewritten == {
        "name": "iris_3",
        "implementation": "x.Y",
        "parameters": {"uri": "./m", "version": "3", "extra": {"keep": "me", "a": "1", "b": "2"}},
    }
    assert original["name"] == "whatever"


def test_rewrite_without_parameters() -> None:
    rewritten = rewrite_settings({"implementation": "x.Y"}, versioned_name="m_1", version=1, extra={})
    assert rewritten == {"name": "m_1", "implementation": "x.Y", "parameters": {"version": "1"}}


def test_write_keeps_existing_settings(tmp_path: Path) -> None:
    (tmp_path / "model-settings.json").write_text(
        json.dumps({"name": "iris", "implementation": "custom.Model", "parameters": {"uri": "./m.bin"}})
    )
    write_model_settings(tmp_path, versioned_name="iris_2", version=2, requirements=["sklearn"], extra={})
    written = json.loads((tmp_path / "model-settings.json").read_text())
    assert written == {
        "name": "iris_2",
        "implementation": "custom.Model",
        "parameters": {"uri": "./m.bin", "version": "2"},
    }


def test_write_generates_when_absent(tmp_path: Path) -> None:
    touch(tmp_path, "model.joblib")
    write_model_settings(
        tmp_path, versioned_name="iris_1", version=1, requirements=["sklearn"], extra={"k": "v"}
    )
    written = json.loads((tmp_path / "model-settings.json").read_text())
    assert written == {
        "name": "iris_1",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1", "extra": {"k": "v"}},
    }


def test_invalid_existing_settings(tmp_path: Path) -> None:
    (tmp_path / "model-settings.json").write_text("[1, 2")
    with pytest.raises(ModelSettingsError, match="cannot read"):
        write_model_settings(tmp_path, versioned_name="m_1", version=1, requirements=[], extra={})


ENVOY = "http://127.0.0.1:9000"


def test_an_explainer_of_a_pipeline_calls_it_through_envoy() -> None:
    spec = scheduler_pb2.ModelSpec(
        explainer=scheduler_pb2.ExplainerSpec(type="anchor_tabular", pipelineRef="p1")
    )
    assert callback_extra(spec, ENVOY) == {
        "infer_uri": f"{ENVOY}/v2/pipelines/p1/infer",
        "explainer_type": "anchor_tabular",
    }


def test_an_explainer_of_a_model_and_an_llm_call_the_model() -> None:
    explainer = scheduler_pb2.ModelSpec(explainer=scheduler_pb2.ExplainerSpec(type="shap", modelRef="income"))
    assert callback_extra(explainer, ENVOY)["infer_uri"] == f"{ENVOY}/v2/models/income/infer"
    llm = scheduler_pb2.ModelSpec(llm=scheduler_pb2.LlmSpec(modelRef="chat"))
    assert callback_extra(llm, ENVOY) == {"infer_uri": f"{ENVOY}/v2/models/chat/infer"}


def test_a_plain_model_calls_nothing() -> None:
    assert callback_extra(scheduler_pb2.ModelSpec(uri="gs://x"), ENVOY) == {}


def test_a_reference_that_is_not_a_resource_name_never_reaches_a_url() -> None:
    spec = scheduler_pb2.ModelSpec(explainer=scheduler_pb2.ExplainerSpec(type="x", modelRef="../../admin"))
    with pytest.raises(ModelSettingsError, match="explainer"):
        callback_extra(spec, ENVOY)


def test_a_callback_model_runs_in_mlservers_own_process() -> None:
    settings = {"implementation": "x.Y", "parallel_workers": 4}
    rewritten = rewrite_settings(
        settings, versioned_name="e_1", version=1, extra={"infer_uri": "u"}, callback=True
    )
    assert rewritten["parallel_workers"] == 0
    assert rewritten["parameters"]["extra"] == {"infer_uri": "u"}
    assert "parallel_workers" not in rewrite_settings({}, versioned_name="m_1", version=1, extra={})
