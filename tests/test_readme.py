"""The README's worked example on your own data and model, run as a user would type it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from alignops.models.tokenizer import load_tokenizer
from tests.helpers import REPO_ROOT, environment_without_mlflow_run, make_project_copy, save_tiny_chat_llama

SECTION = "## Your own data and model"


def readme_blocks(heading: str) -> list[str]:
    """The ```bash blocks of the README section under ``heading``, in order."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index(heading) + len(heading):]
    section = section[: section.find("\n## ")] if "\n## " in section else section
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_the_section_names_what_the_test_runs():
    blocks = readme_blocks(SECTION)
    assert len(blocks) >= 3
    assert "conf/my_data/catalog.yml" in blocks[0] and "conf/my_data/parameters.yml" in blocks[0]
    assert blocks[1].strip().startswith(".venv/bin/kedro run --env my_data --params")


@pytest.mark.slow
def test_the_worked_example_runs_as_written_on_a_tiny_chat_llama(tmp_path):
    setup, smoke = readme_blocks(SECTION)[:2]
    project = make_project_copy(tmp_path / "project")
    shutil.copytree(REPO_ROOT / "examples", project / "examples")
    (project / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    hh = pd.read_json(project / "examples" / "hh_rlhf" / "harmless-base-sample.jsonl.gz", lines=True)
    model = save_tiny_chat_llama(
        project / "data" / "01_raw" / "models" / "my-llama", texts=hh["chosen"].head(60).tolist()
    )

    env = {**environment_without_mlflow_run(), "KEDRO_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", setup + smoke], cwd=project, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    data = project / "data"
    template = load_tokenizer(str(data / "06_models" / "tokenizer")).chat_template
    assert template is not None and template == load_tokenizer(str(model)).chat_template  # the model's own
    summary = json.loads((data / "08_reporting" / "evaluation_summary.json").read_text())
    assert summary["judge"] == "audit" and set(summary["policies"]) == {"sft", "ppo", "dpo", "best_of_n"}
    decision = json.loads((data / "08_reporting" / "registry_decision.json").read_text())
    assert decision["judge"] == "audit" and decision["decision"] in {"promoted", "held"}
    # a tiny random model makes an audit judge no better than chance: the gate holds without a verdict
    accuracy = summary["audit_judge"]["panel_accuracy"]
    if accuracy["ci_low"] <= 0.5:
        assert decision["decision"] == "held" and "no evidence" in decision["reason"]
    else:
        assert decision["n_prompts"] == summary["n_prompts"] > 0
    quarantine = (data / "02_intermediate" / "preferences_quarantine.jsonl").read_text().splitlines()
    assert len([line for line in quarantine if line.strip()]) == 6  # the sample's six malformed pairs
