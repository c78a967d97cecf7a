"""Config loading: variants, overrides, and errors that name the bad key or type."""

import subprocess
import sys

import pytest

from augdiff.config import ConfigError, config_diff, load_config

SPEC = "configs/classify_cifar10.py:smoke"


@pytest.fixture(autouse=True)
def _in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)


def test_overrides_apply_with_and_without_prefix():
    cfg = load_config(SPEC, ["seed=3", "--config.data.per_class=7"])
    assert cfg.seed == 3 and cfg.data.per_class == 7


def test_variant_changes_the_config():
    assert config_diff(
        load_config(SPEC).to_dict(), load_config("configs/classify_cifar10.py").to_dict()
    )


@pytest.mark.parametrize(
    "override, named", [("nosuch=1", "'nosuch'"), ("data.nokey=2", "'data.nokey'")]
)
def test_unknown_key_is_named(override, named):
    with pytest.raises(ConfigError, match=named):
        load_config(SPEC, [override])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"config\.seed"):
        load_config(SPEC, ["seed=abc"])


def test_config_is_locked():
    cfg = load_config(SPEC)
    with pytest.raises(AttributeError):
        cfg.not_a_field = 1


def test_cli_reports_config_errors_with_exit_code_2(repo_root):
    out = subprocess.run(
        [sys.executable, "-m", "augdiff.cli", "train", "--config", SPEC, "--config.data.nokey=2"],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=120,
    )
    assert out.returncode == 2
    assert "unknown config key 'data.nokey'" in out.stderr


def test_config_diff_names_nested_fields():
    assert config_diff({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 5}, "e": 3}) == [
        "a.c",
        "d",
        "e",
    ]
