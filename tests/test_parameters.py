"""A run builds every parameter block it reads before its first node: a misspelt key or an
impossible value fails in the first seconds, naming the block and the key, with no node
run and no MLflow run opened."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from alignops.parameters import (
    PARAMETER_CONFIGS,
    ParameterError,
    check_parameters,
    config_class,
    parameter_blocks,
)
from alignops.pipeline_registry import register_pipelines
from tests.helpers import REPO_ROOT, run_kedro

TRAINING_BLOCKS = {"model", "generation", "sft", "reward", "ppo", "dpo", "evaluation", "report", "registry"}


def base_parameters() -> dict:
    params = {}
    for path in sorted((REPO_ROOT / "conf" / "base").glob("parameters_*.yml")):
        params.update(yaml.safe_load(path.read_text()))
    return params


def reading_stage(block: str) -> str:
    """The first stage (in the registry's order) whose nodes read ``block``."""
    for stage, pipeline in register_pipelines().items():
        if stage not in ("data", "__default__") and block in parameter_blocks(pipeline.datasets()):
            return stage
    raise AssertionError(f"no stage reads params:{block}")


def misspelt(block: str) -> tuple[str, str]:
    """A field of ``block``'s config and the same name with its last two letters swapped."""
    for field in dataclasses.fields(config_class(block)):
        typo = field.name[:-2] + field.name[-1] + field.name[-2]
        if len(field.name) >= 4 and typo != field.name:
            return field.name, typo
    raise AssertionError(f"{block} has no field to misspell")


def assert_nothing_ran(project: Path) -> None:
    """No node wrote an output and no MLflow run was opened (kedro-mlflow opens one before
    the first node)."""
    from mlflow.tracking import MlflowClient

    assert [p for p in (project / "data").rglob("*") if p.is_file()] == []
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_the_shipped_parameters_pass():
    check_parameters(base_parameters())


def test_every_config_block_is_read_by_a_stage():
    assert {block: reading_stage(block) for block in PARAMETER_CONFIGS}


def test_the_data_pipeline_reads_no_training_block():
    blocks = parameter_blocks(register_pipelines()["data"].datasets())
    assert blocks is not None and {"data_validation", "data_report"} <= blocks
    assert not blocks & TRAINING_BLOCKS


def test_a_node_reading_all_parameters_makes_every_block_count():
    assert parameter_blocks(["params:sft.learning_rate", "parameters"]) is None
    assert parameter_blocks(["params:sft.learning_rate", "params:world", "tokenizer"]) == {"sft", "world"}


def test_a_nested_key_is_named_with_its_dataclass_and_a_suggestion():
    params = base_parameters()
    params["world"]["candidates"]["tonez"] = params["world"]["candidates"].pop("tones")
    with pytest.raises(ParameterError) as error:
        check_parameters(params, ["world"])
    assert "parameters 'world': unknown key 'tonez' in ResponseMix (did you mean 'tones'?)" in str(error.value)


def test_every_problem_of_every_block_is_in_one_error():
    params = base_parameters()
    params["evaluation"] = {**params["evaluation"], "seeed": 1, "best_of_n": -1}
    params["generation"] = {**params["generation"], "top_p": 0}
    with pytest.raises(ParameterError) as error:
        check_parameters(params, ["evaluation", "generation", "sft"])
    lines = str(error.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("parameters 'evaluation': unknown key 'seeed' (did you mean 'seed'?); ")
    assert "best_of_n" in lines[0]
    assert lines[1].startswith("parameters 'generation': ") and "top_p" in lines[1]


@pytest.mark.parametrize("block", sorted(PARAMETER_CONFIGS))
def test_a_misspelt_key_fails_the_run_before_its_first_node(project_copy, block):
    key, typo = misspelt(block)
    stage = reading_stage(block)
    with pytest.raises(ParameterError) as error:
        run_kedro(project_copy, pipeline_names=[stage], runtime_params={block: {typo: 1}})
    assert f"parameters '{block}': unknown key '{typo}' (did you mean '{key}'?)" in str(error.value)
    assert_nothing_ran(project_copy)


@pytest.mark.parametrize(
    ("block", "impossible", "named"),
    [
        ("registry", {"margin": -1}, "margin"),
        ("evaluation", {"best_of_n": -1}, "best_of_n"),
        ("ppo", {"gamma": 2.0}, "gamma"),
    ],
)
def test_an_impossible_value_fails_the_run_before_its_first_node(project_copy, block, impossible, named):
    with pytest.raises(ParameterError) as error:
        run_kedro(project_copy, pipeline_names=[reading_stage(block)], runtime_params={block: impossible})
    message = str(error.value)
    assert message.startswith(f"parameters '{block}': ") and named in message
    assert_nothing_ran(project_copy)


def test_a_run_checks_only_the_blocks_its_pipelines_read(project_copy):
    with pytest.raises(ParameterError) as error:
        run_kedro(project_copy, pipeline_names=["registry"],
                  runtime_params={"sft": {"learnign_rate": 1}, "registry": {"marign": 0.1}})
    assert "'registry'" in str(error.value) and "'sft'" not in str(error.value)


def test_kedro_run_params_with_a_misspelt_key_fail_naming_it(project_copy, monkeypatch):
    # `kedro run --params ...` through Kedro's own CLI group in this process: the parsing of
    # `--params` a user's command goes through, without a new process importing torch again.
    from click.testing import CliRunner
    from kedro.framework.cli.cli import KedroCLI

    monkeypatch.chdir(project_copy)  # `kedro run` finds its project from the working directory
    result = CliRunner().invoke(
        KedroCLI(project_copy),
        ["run", "--env", "test", "--pipelines", "registry", "--params", "registry.marign=0.1"],
    )
    assert isinstance(result.exception, ParameterError), result.output[-3000:] + repr(result.exception)
    assert "parameters 'registry': unknown key 'marign' (did you mean 'margin'?)" in str(result.exception)
    assert_nothing_ran(project_copy)


def test_blocks_that_disagree_fail_together_naming_both():
    from alignops.parameters import ParameterError, check_parameters

    base = {
        "audit_judge": {"base": "sft", "train": True},
        "data_split": {"heldout_fraction": 0.1, "audit_fraction": 0.0, "seed": 0},
        "generation": {"max_new_tokens": 200},
        "model": {"max_response_tokens": 160},
    }
    with pytest.raises(ParameterError) as error:
        check_parameters(base, list(base))
    message = str(error.value)
    assert "data_split.audit_fraction is 0" in message and "generation.max_new_tokens (200)" in message
    fixed = {**base, "audit_judge": {"base": "somewhere", "train": False}, "generation": {"max_new_tokens": 160}}
    check_parameters(fixed, list(fixed))
    # a run that does not read audit_judge is not held to it
    check_parameters({**base, "generation": {"max_new_tokens": 160}}, ["model", "generation", "data_split"])


def test_a_misspelt_block_name_is_named_and_a_users_own_block_passes():
    from alignops.parameters import ParameterError, check_parameters, misspelt_blocks

    assert misspelt_blocks({"regsitry": {"margin": 0.1}, "my_experiment": {"note": "x"}}) == [
        "parameters 'regsitry': no stage reads this block (did you mean 'registry'?)"
    ]
    with pytest.raises(ParameterError, match="did you mean 'registry'"):
        check_parameters({"regsitry": {"margin": 0.1}}, [])
