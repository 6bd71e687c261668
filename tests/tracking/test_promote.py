"""The promotion override finds the project's store from any folder inside the project; an
explicit URI or ``MLFLOW_TRACKING_URI`` still wins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from alignops.tracking.promote import main, store_uris
from alignops.tracking.registry import CHAMPION
from alignops.tracking.run_info import find_project_root, project_mlflow_uris
from tests.helpers import copy_empty_mlflow_store, environment_without_mlflow_run, make_project_copy

PROMOTE = Path(sys.executable).parent / "alignops-promote"
MODEL = "alignops-policy"


def register_versions(store: Path, count: int, champion: str | None = None) -> MlflowClient:
    uri = f"sqlite:///{store}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(MODEL)
    for _ in range(count):
        client.create_model_version(MODEL, source="file:///nowhere")
    if champion:
        client.set_registered_model_alias(MODEL, CHAMPION, champion)
    return client


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    return make_project_copy(tmp_path / "project")


def test_the_project_root_is_found_from_a_nested_folder(project, tmp_path):
    nested = project / "notebooks" / "deep"
    nested.mkdir(parents=True)
    assert find_project_root(nested) == project.resolve()
    assert find_project_root(tmp_path) is None  # pyproject.toml alone is not enough: no [tool.kedro]
    store = f"sqlite:///{(project / 'mlflow.db').resolve()}"
    assert project_mlflow_uris(project) == (store, store)


def test_alignops_promote_lists_and_moves_champion_from_a_nested_folder(project, monkeypatch, capsys):
    client = register_versions(project / "mlflow.db", 2, champion="1")
    nested = project / "data" / "08_reporting" / "notes"
    nested.mkdir()

    def promote(*args: str) -> str:
        result = subprocess.run([str(PROMOTE), *args], cwd=nested, env=environment_without_mlflow_run(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    listing = promote().splitlines()
    assert listing[0] == f"{MODEL} in sqlite:///{(project / 'mlflow.db').resolve()}"
    assert [line.split()[:2] for line in listing[1:]] == [["v2", "-"], ["v1", CHAMPION]]

    assert promote("2", "--reason", "passed the human audit").strip() == (
        f"{MODEL}: champion v1 -> v2 (passed the human audit)"
    )
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "2"
    assert client.get_model_version(MODEL, "2").tags["promotion.replaced"] == "v1"
    monkeypatch.chdir(nested)  # the same listing in this process, without starting another
    main([])
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listing[1:]] == [["v2", CHAMPION, "overridden"], ["v1", "-", "-"]]
    assert listing[1].endswith("passed the human audit")
    assert not (nested / "mlflow.db").exists()  # no stray store where the command ran


def test_an_explicit_uri_or_the_environment_wins_over_the_project(project, tmp_path, monkeypatch, capsys):
    elsewhere = copy_empty_mlflow_store(tmp_path / "elsewhere.db")
    client = register_versions(elsewhere, 1)
    env_uri, flag_uri = f"sqlite:///{elsewhere}", f"sqlite:///{tmp_path / 'flag.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    assert store_uris(None, None, project) == (env_uri, env_uri)
    assert store_uris(flag_uri, None, project) == (flag_uri, flag_uri)
    assert store_uris(None, flag_uri, project) == (env_uri, flag_uri)

    monkeypatch.chdir(project)
    main(["1", "--reason", "tracked elsewhere"])
    assert "champion v- -> v1" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "1"
    project_uri = f"sqlite:///{project / 'mlflow.db'}"
    assert MlflowClient(tracking_uri=project_uri, registry_uri=project_uri).search_registered_models() == []


def test_outside_a_project_it_asks_for_a_uri(tmp_path, monkeypatch, capsys):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main([])
    assert "no Kedro project" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # and no empty store left behind


def test_a_project_without_a_store_yet_is_said_plainly(tmp_path, monkeypatch, capsys):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    project = make_project_copy(tmp_path / "project", tracking_store=False)
    monkeypatch.chdir(project / "conf")
    with pytest.raises(SystemExit):
        main(["3", "--reason", "why not"])
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (project / "mlflow.db").exists()


def test_a_promoted_policys_reward_model_follows_it_unless_asked_not_to(project, monkeypatch, capsys):
    client = register_versions(project / "mlflow.db", 2, champion="1")
    client.create_registered_model("alignops-reward-model")
    for _ in range(2):
        client.create_model_version("alignops-reward-model", source="file:///nowhere")
    client.set_registered_model_alias("alignops-reward-model", CHAMPION, "1")
    client.set_model_version_tag(MODEL, "2", "reward_model_version", "2")
    monkeypatch.chdir(project)

    main(["2", "--reason", "audited", "--policy-only"])
    assert str(client.get_model_version_by_alias("alignops-reward-model", CHAMPION).version) == "1"
    main(["2", "--reason", "audited"])
    out = capsys.readouterr().out
    assert "alignops-reward-model: champion v1 -> v2 (with alignops-policy v2: audited)" in out
    assert str(client.get_model_version_by_alias("alignops-reward-model", CHAMPION).version) == "2"
