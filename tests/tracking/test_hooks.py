"""The tracking hook's own pieces: secrets redacted, git state, file digests."""

from __future__ import annotations

import hashlib
import subprocess

import mlflow

from alignops.catalog.preferences import PreferenceSourceDataset
from alignops.hooks import AlignopsMlflowHook
from alignops.tracking.run_info import REDACTED, dataset_files, file_md5, git_state


def test_secret_looking_parameters_are_redacted(tracking_uri):
    hook = AlignopsMlflowHook()
    with mlflow.start_run() as run:
        hook._log_param("model.hub_token", "hf_abcdef")
        hook._log_param("credentials.api_key", "sk-123")
        hook._log_param("server.client_secret", "s3cr3t")
        hook._log_param("sft.learning_rate", 0.007)
        hook._log_param("model.max_prompt_tokens", 64)
        hook._log_param("model.tokenizer_min_frequency", 2)
    params = mlflow.get_run(run.info.run_id).data.params
    assert params == {"model.hub_token": REDACTED, "credentials.api_key": REDACTED, "server.client_secret": REDACTED,
                      "sft.learning_rate": "0.007", "model.max_prompt_tokens": "64",
                      "model.tokenizer_min_frequency": "2"}


def test_git_state_reports_commit_and_dirtiness(tmp_path):
    assert git_state(tmp_path) == {}  # not a repository
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path)["git.commit"] == head and git_state(tmp_path)["git.dirty"] == "false"
    (tmp_path / "untracked.txt").write_text("ignored\n")
    assert git_state(tmp_path)["git.dirty"] == "false"
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path)["git.dirty"] == "true"


def test_every_file_behind_a_glob_is_hashed_like_dvc(tmp_path):
    for name, text in {"a.jsonl": "{}\n", "b.jsonl": "{}\n{}\n"}.items():
        (tmp_path / name).write_text(text)
    dataset = PreferenceSourceDataset(filepath=str(tmp_path / "*.jsonl"), format="auto")
    files = dataset_files(dataset)
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    assert file_md5(files[1]) == hashlib.md5(b"{}\n{}\n").hexdigest()


def test_relative_sqlite_uris_are_anchored_at_the_project_root(tmp_path):
    from alignops.tracking.run_info import project_sqlite_uri

    assert project_sqlite_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert project_sqlite_uri("sqlite:////abs/mlflow.db", tmp_path) == "sqlite:////abs/mlflow.db"
    assert project_sqlite_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert project_sqlite_uri(None, tmp_path) is None


def test_run_name_says_pipelines_environment_and_commit():
    from alignops.tracking.run_info import run_name

    commit = "64b122e0c3a1d2f5e6b7a8c9d0e1f2a3b4c5d6e7"
    clean = {"git.commit": commit, "git.dirty": "false"}
    assert run_name(["__default__"], "local", clean) == "__default__ local 64b122e"
    assert run_name(["sft", "reward"], "test", {"git.commit": commit, "git.dirty": "true"}) == \
        "sft+reward test 64b122e-dirty"
    assert run_name(["data"], "hh_rlhf", {}) == "data hh_rlhf"  # outside git: no commit to name


def test_a_kedro_run_is_named_for_its_pipeline_environment_and_commit(tmp_path):
    from tests.helpers import make_project_copy, run_kedro

    project = make_project_copy(tmp_path / "project")

    def git(*args):
        return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "conf", "pyproject.toml")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "project")
    run_kedro(project, env="test", pipeline_names=["data_generation"])
    with (project / "conf" / "base" / "parameters_tracking.yml").open("a") as handle:
        handle.write("# an uncommitted change\n")
    run_kedro(project, env="test", pipeline_names=["data_generation"])

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("alignops")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    short = git("rev-parse", "--short=7", "HEAD")
    assert [r.info.run_name for r in runs] == [f"data_generation test {short}", f"data_generation test {short}-dirty"]
