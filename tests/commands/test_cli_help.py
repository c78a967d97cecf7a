"""`augdiff <command> -h/--help` for every command, and `augdiff config show`.

Expected flags, configs and variants are written here; a config's fields are read by loading
the config file with ml_collections here, not through augdiff's loader.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from augdiff import cli

# Each command and flags its help must name (written here, not read from the parsers).
FLAGS = {
    "env": ["-h", "--help"],
    "train": ["--config", "--config.FIELD=VALUE", "--help"],
    "train-diffusion": ["--config", "--config.FIELD=VALUE", "--help"],
    "sample": ["--config", "--config.FIELD=VALUE", "--help"],
    "generate": ["--config", "--config.FIELD=VALUE", "--help"],
    "evaluate": ["--config", "--config.FIELD=VALUE", "--help"],
    "run": ["--config", "--config.FIELD=VALUE", "--help"],
    "export": ["--store", "--out", "--data", "--table"],
    "inspect": ["--store", "--data", "--json"],
    "compile": ["--config", "--topology", "--stage", "--only", "--batch", "--json", "--md"],
    "config": ["show", "--json", "--config.FIELD=VALUE"],
}
# reStructuredText that must not reach a terminal (no backtick at all).
RST = [re.compile(r"``"), re.compile(r":(func|mod|class|data|meth|attr):`"),
       re.compile(r"::\s*$", re.MULTILINE), re.compile(r"`")]


@pytest.fixture(autouse=True)
def _in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)


def _help(capsys, *args: str) -> str:
    rc = cli.main(["augdiff", *args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def test_every_command_has_a_help_test():
    assert set(FLAGS) == set(cli.COMMANDS)


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_exits_0_with_flags_and_no_markup(command, flag, capsys):
    out = _help(capsys, command, flag)
    assert f"augdiff {command}" in out
    for f in FLAGS[command]:
        assert f in out, f"{command} {flag}: {f} missing"
    for pattern in RST:
        assert not pattern.search(out), f"{command} {flag}: markup {pattern.pattern!r}"


def test_top_level_help_lists_every_command(capsys):
    out = _help(capsys, "--help")
    for command in FLAGS:
        assert re.search(rf"^  {re.escape(command)}\s", out, re.MULTILINE), command


def test_env_help_does_not_run_env(capsys, monkeypatch):
    import augdiff.distributed as distributed

    def boom(*a, **k):
        raise AssertionError("env ran")

    monkeypatch.setattr(distributed, "initialize_distributed", boom)
    monkeypatch.setattr(distributed, "make_mesh", boom)
    out = _help(capsys, "env", "--help")
    assert "versions" in out and "[process" not in out


def test_env_rejects_an_unknown_flag(capsys):
    assert cli.main(["augdiff", "env", "--nope"]) == 2
    assert "--nope" in capsys.readouterr().err


@pytest.mark.parametrize("command,listed,not_listed,variant", [
    ("train", "configs/classify_cifar10.py", "configs/casd_cifar10.py", "preact_ls"),
    ("train-diffusion", "configs/casd_cifar10.py", "configs/classify_cifar10.py", "classcond"),
    ("sample", "configs/generator_cifar10.py", "configs/quickstart.py", "test"),
    ("generate", "configs/sd_generate.py", "configs/casd_cifar10.py", "fewshot_smoke"),
    ("evaluate", "configs/evaluate_cifar10.py", "configs/sd_generate.py", "inception"),
    ("run", "configs/quickstart.py", "configs/classify_cifar10.py", "train_generator"),
])
def test_help_lists_the_shipped_configs_a_command_takes(command, listed, not_listed, variant,
                                                        capsys):
    out = _help(capsys, command, "--help")
    assert f"  {listed}\n" in out and f"  {not_listed}\n" not in out
    assert variant in out


def _load_independently(repo_root, name: str, variant: str) -> ml_collections.ConfigDict:
    """The config file run as ml_collections does: import the file, call get_config."""
    path = repo_root / "augdiff" / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_help_test_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _help_fields(out: str) -> dict[str, str]:
    body = out.split("fields of ", 1)[1]
    return dict(m.groups() for m in re.finditer(r"^  (\S+) = (.*)$", body, re.MULTILINE))


@pytest.mark.parametrize("command,name,variant", [
    ("train-diffusion", "casd_cifar10", "smoke"),
    ("train", "classify_cifar10", "preact"),
    ("run", "quickstart", "test"),
])
def test_help_field_defaults_equal_the_configs(command, name, variant, repo_root, capsys):
    out = _help(capsys, command, "--help", "--config", f"configs/{name}.py:{variant}")
    shown = _help_fields(out)
    expected = {k: repr(v) for k, v in _leaves(_load_independently(repo_root, name, variant))}
    assert shown == expected
    assert "variants:" in out


def test_help_with_an_override_shows_the_overridden_value(capsys):
    out = _help(capsys, "train-diffusion", "--config=configs/casd_cifar10.py:smoke",
                "--config.train.lr=0.25", "-h")
    assert _help_fields(out)["train.lr"] == "0.25"


def test_help_of_a_bad_config_is_a_one_line_error(capsys):
    rc = cli.main(["augdiff", "train", "--help", "--config", "configs/no_such.py"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no_such.py" in err


def test_unexpected_argument_points_at_help(capsys):
    rc = cli.main(["augdiff", "sample", "--nope"])
    err = capsys.readouterr().err
    assert rc == 2 and "--nope" in err and "--help" in err


def test_config_show_prints_the_resolved_override(capsys, repo_root):
    rc = cli.main(["augdiff", "config", "show", "configs/casd_cifar10.py:smoke",
                   "--config.train.lr=0.25", "--config.sample.sampler=euler"])
    out = capsys.readouterr().out
    assert rc == 0
    train = out.split("\ntrain:\n", 1)[1]
    assert re.search(r"^  lr: 0\.25$", train, re.MULTILINE)
    assert re.search(r"^  sampler: euler$", out, re.MULTILINE)
    rc = cli.main(["augdiff", "config", "show", "configs/casd_cifar10.py:smoke",
                   "--config.train.lr=0.25", "--json"])
    shown = json.loads(capsys.readouterr().out)
    expected = _load_independently(repo_root, "casd_cifar10", "smoke")
    expected.train.lr = 0.25
    assert shown == json.loads(expected.to_json_best_effort())


def test_config_show_bad_override_names_the_field_and_lists_the_valid_ones(capsys):
    rc = cli.main(["augdiff", "config", "show", "configs/casd_cifar10.py:smoke",
                   "--config.train.lrr=1"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "train.lrr" in err and "lr_rampup_images" in err and "total_images" in err


def test_config_show_runs_nothing_and_starts_no_jax(repo_root, tmp_path):
    """In a fresh interpreter: no JAX imported, no workdir created, output printed."""
    workdir = tmp_path / "must_not_exist"
    code = ("import sys; from augdiff.cli import main; "
            "rc = main(['augdiff', 'config', 'show', 'configs/quickstart.py', "
            f"'--config.workdir={workdir}']); "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    p = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout
    assert f"workdir: {workdir}" in p.stdout
    assert not workdir.exists()


@pytest.mark.parametrize("command,name", [
    ("train-diffusion", "casd_cifar10"), ("run", "quickstart"), ("train", "classify_cifar10"),
])
def test_help_variants_are_what_get_config_says(command, name, repo_root, capsys):
    """The variants shown are the list the config's own get_config gives for an unknown one."""
    with pytest.raises(ValueError) as e:
        _load_independently(repo_root, name, "__probe__")
    listed = str(e.value).split("'__probe__'", 1)[1].strip(" ;:")
    out = _help(capsys, command, "--help")
    assert " ".join(listed.split()) in " ".join(out.split())


def test_config_command_help_starts_no_jax(repo_root):
    code = ("import sys; from augdiff.cli import main; "
            "rc = main(['augdiff', 'train', '--help', '--config', "
            "'configs/classify_cifar10.py:smoke']); "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    p = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout and "  epochs = 2" in p.stdout
