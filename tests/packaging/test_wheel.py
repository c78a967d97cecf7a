"""augdiff installed as a wheel, run from a directory that is not the repository.

The shipped configs (``configs/x.py`` specs), the shipped generator and reference classifier
are package data: a wheel carries them and ``augdiff run`` finds them with no source tree.
The wheel is built from the checkout and unpacked into a folder of its own (what ``pip
install`` does for a pure-Python wheel); the dependencies come from the test environment.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
    """The package built as a wheel (from a copy of the sources, so the build leaves nothing
    in the checkout) and unpacked into ``site/``."""
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    shutil.copytree(REPO / "augdiff", src / "augdiff",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)], capture_output=True, text=True, timeout=600,
        cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("augdiff-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def _env(site: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site)}


def test_the_wheel_carries_the_configs_and_assets(installed):
    pkg = installed / "augdiff"
    assert (pkg / "configs" / "quickstart.py").is_file()
    assert (pkg / "configs" / "common.py").is_file()
    assert sorted(p.name for p in (pkg / "configs").glob("exp_seed00*.py")) == [
        "exp_seed000_diffusemix.py", "exp_seed001_augcond.py", "exp_seed003_diffinv.py",
        "exp_seed003_edm_analog.py", "exp_seed004_casd.py"]
    assert (pkg / "assets" / "generator_cifar10" / "generator.json").is_file()
    assert list((pkg / "assets" / "reference_classifiers").iterdir())
    assert not (installed / "configs").exists() and not (installed / "tests").exists()


def test_every_shipped_config_loads_from_another_directory(installed, tmp_path):
    code = (
        "import augdiff, pathlib, sys\n"
        f"assert augdiff.__file__.startswith({str(installed)!r}), augdiff.__file__\n"
        "from augdiff.config import load_config, resolve_path\n"
        "names = sorted(p.name for p in (pathlib.Path(augdiff.__file__).parent / 'configs')"
        ".glob('*.py') if p.name not in ('__init__.py', 'common.py'))\n"
        "for n in names:\n"
        "    load_config(f'configs/{n}')\n"
        "ref = resolve_path('configs/classify_cifar10.py')\n"
        f"assert ref.startswith({str(installed)!r}), ref\n"
        "print(len(names))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) >= 18


@pytest.mark.slow
def test_quickstart_runs_from_the_wheel(installed, tmp_path, cifar_zip):
    """The quickstart's prepare → generate (the shipped generator) → report, from the wheel."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "augdiff.cli", "run", "--config", "configs/quickstart.py",
           f"--config.workdir={workdir}", f"--config.data.path={cifar_zip}",
           "--config.data.per_class=2", "--config.generator.num_samples=20",
           "--config.stages=('prepare', 'generate', 'report')"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(installed), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (workdir / "report.md").read_text()
    # the title names the config, the data actually used and the generator
    assert report.startswith("# quickstart (default): cifar10-jpeg, 10 classes, 20 training "
                             "images — the EDM generator shipped with augdiff"), report[:300]
    assert "20 images" in report.replace(",", "")
    # the store sampled from the shipped generator names its classes (the zip's class folders)
    names = sorted({n.split("/")[-2] for n in zipfile.ZipFile(cifar_zip).namelist()
                    if "/train/" in f"/{n}" and n.endswith(".jpg")})
    manifests = list(workdir.rglob("manifest-p00000.json"))
    assert manifests and all(json.loads(m.read_text())["class_names"] == names
                             for m in manifests)
    assert str(installed) in (workdir / "stages.json").read_text()  # the wheel's generator
