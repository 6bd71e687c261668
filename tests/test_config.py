"""Every parameter block mirrors its config dataclass one to one, and the test environment only
overrides keys that exist: a misspelt or forgotten key fails here, not deep inside a run."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from kedro.config import OmegaConfigLoader

from alignops.parameters import PARAMETER_CONFIGS, WITHOUT_CONFIG, config_class
from alignops.settings import CONFIG_LOADER_ARGS
from tests.helpers import REPO_ROOT

CONF = REPO_ROOT / "conf"
CONFIGS: dict[str, tuple[str, type]] = {
    block: (file, config_class(block)) for block, (file, _) in PARAMETER_CONFIGS.items()
}
"""alignops.parameters' mapping with each class imported: block -> (its file, its dataclass)."""


def blocks(env: str) -> dict[str, tuple[str, dict | list]]:
    """Every top-level block of ``conf/<env>/parameters_*.yml``: name -> (file, value)."""
    found: dict[str, tuple[str, dict | list]] = {}
    for path in sorted((CONF / env).glob("parameters_*.yml")):
        for name, value in yaml.safe_load(path.read_text()).items():
            assert name not in found, f"{name} is set in {found[name][0]} and {path.name}"
            found[name] = (path.stem.removeprefix("parameters_"), value)
    return found


def plain(value):
    """``value`` with tuples as lists: YAML gives lists where a dataclass default is a tuple."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def fields(config) -> dict:
    """A config's fields (nested dataclasses too) as plain values."""
    return plain(dataclasses.asdict(config))


def test_every_base_block_has_a_config_in_its_own_file():
    files = {name: file for name, (file, _) in blocks("base").items()}
    assert files == {name: file for name, (file, _) in CONFIGS.items()} | WITHOUT_CONFIG


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_base_yaml_mirrors_the_config_and_states_its_defaults(name):
    config_class = CONFIGS[name][1]
    params = blocks("base")[name][1]
    assert list(params) == [field.name for field in dataclasses.fields(config_class)]  # same keys, same order
    # the YAML states the defaults, so code that builds a config without Kedro gets the shipped one
    assert fields(config_class(**params)) == fields(config_class())


@pytest.mark.parametrize("name", sorted(blocks("test")))
def test_the_test_env_overrides_only_keys_the_config_has(name):
    assert name in CONFIGS, f"conf/test sets {name}, which no config reads"
    config_class = CONFIGS[name][1]
    overrides = blocks("test")[name][1]
    assert set(overrides) <= {field.name for field in dataclasses.fields(config_class)}
    # what a node gets in the test env: base with the test env's keys merged in (soft merge)
    merged = OmegaConfigLoader(str(CONF), env="test", **CONFIG_LOADER_ARGS)["parameters"][name]
    assert merged == {**blocks("base")[name][1], **overrides}
    built = fields(config_class(**merged))
    assert {key: built[key] for key in overrides} == plain(overrides)


def test_an_unquoted_no_is_no_mixed_precision():
    """YAML 1.1 reads `mixed_precision: no` as false; `dvc exp run -S` rewrites a parameters
    file with a YAML 1.2 writer, which drops the quotes around "no"."""
    import yaml

    from alignops.training.dpo_config import DPOConfig
    from alignops.training.ppo_config import PPOConfig
    from alignops.training.reward_config import RewardConfig
    from alignops.training.sft_config import SFTConfig

    written = yaml.safe_load("mixed_precision: no")
    assert written == {"mixed_precision": False}
    for config in (SFTConfig, RewardConfig, PPOConfig, DPOConfig):
        assert config(**written).mixed_precision == "no", config.__name__
    with pytest.raises(ValueError, match="mixed_precision must be null"):
        PPOConfig(mixed_precision=True)


def test_unset_mixed_precision_is_accelerates_own_setting(monkeypatch):
    """null (the default) lets `accelerate launch --mixed_precision`, its config file or
    ACCELERATE_MIXED_PRECISION decide; a stage's explicit value overrides them."""
    from accelerate.state import AcceleratorState

    from alignops.training.accelerator import make_accelerator
    from alignops.training.sft_config import SFTConfig

    assert SFTConfig().mixed_precision is None
    AcceleratorState._reset_state(reset_partial_state=True)
    assert make_accelerator(SFTConfig().mixed_precision).mixed_precision == "no"  # nothing configured
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(reset_partial_state=True)
    assert make_accelerator(None, cpu=True).mixed_precision == "bf16"
    assert make_accelerator("no", cpu=True).mixed_precision == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    make_accelerator("bf16", cpu=True)  # one stage asks for bf16: the next, unset, does not inherit it
    assert make_accelerator(None, cpu=True).mixed_precision == "no"
    AcceleratorState._reset_state(reset_partial_state=True)
