"""Shared test set-up: 8 simulated CPU devices, the persistent compile cache, absl flags, and
the CI skip policy.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.

CI skip policy (``CI=true``): a missing real dataset or test extra is an error, not a skip, and
the run fails if any test skips that is not on ``SKIP_ALLOW_LIST`` (node-id glob -> reason);
the skips seen are printed at the end of the run, allowed ones with their reason. Works with
pytest-xdist (skip reports reach the controller, which sets the exit status).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Converted-weights cache off in tests (a cached copy would hide conversion changes);
# tests/sd/test_weights_cache.py turns it on in a temporary directory.
os.environ.setdefault("AUGDIFF_WEIGHTS_CACHE", "off")

import fnmatch  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cache_dir() -> str:
    return os.environ.get("AUGDIFF_JAX_CACHE", str(REPO / ".jax_cache"))


from augdiff import distributed  # noqa: E402

CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

# Skips CI accepts, each with its reason (node-id glob -> reason). Keep it short.
SKIP_ALLOW_LIST: dict[str, str] = {}  # empty: every test runs in CI


def _allowed(nodeid: str) -> str | None:
    for pattern, reason in SKIP_ALLOW_LIST.items():
        if fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


# The test extras CI must have (pyproject ``test`` and ``torch``): missing one is an error.
CI_REQUIRED_MODULES = ("torch", "scipy", "skimage", "ruff", "xdist", "datasets", "webdataset")

_SKIPS: list[tuple[str, str]] = []  # (nodeid, reason) of every skipped test or module


def pytest_configure(config):
    if CI and not hasattr(config, "workerinput"):
        import importlib.util

        missing = [m for m in CI_REQUIRED_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise pytest.UsageError(
                f"CI=true: test extra module(s) {missing} not installed "
                "(pip install -e '.[test,torch]')"
            )


def _record(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPS.append((report.nodeid, _skip_reason(report)))


def pytest_runtest_logreport(report):
    _record(report)


def pytest_collectreport(report):
    _record(report)


def _unexplained() -> list[tuple[str, str]]:
    return [(n, r) for n, r in _SKIPS if _allowed(n) is None]


def pytest_sessionfinish(session, exitstatus):
    if CI and not hasattr(session.config, "workerinput") and _unexplained():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):
        return
    seen = sorted(set(_SKIPS))
    tr = terminalreporter
    tr.section("skip allow-list")
    if not SKIP_ALLOW_LIST:
        tr.write_line("(empty)")
    for pattern, reason in SKIP_ALLOW_LIST.items():
        hits = sum(fnmatch.fnmatchcase(n, pattern) for n, _ in seen)
        tr.write_line(f"{pattern}: {reason} (skipped {hits}x this run)")
    bad = _unexplained()
    if bad:
        verdict = "-> the run FAILS (CI=true)" if CI else "(allowed outside CI)"
        tr.write_line(f"{len(bad)} skip(s) not on the allow-list {verdict}:", red=CI)
        for nodeid, reason in sorted(set(bad)):
            tr.write_line(f"  {nodeid}: {reason}", red=CI)
    else:
        tr.write_line("no skips outside the allow-list")


os.environ["AUGDIFF_JAX_CACHE"] = _cache_dir()
distributed.enable_compilation_cache(_cache_dir())


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def cifar_zip() -> pathlib.Path:
    """The shared real CIFAR-10 zip (``../shared/data/cifar10-jpeg.zip`` beside the repo)."""
    default = REPO.parent / "shared/data/cifar10-jpeg.zip"
    path = pathlib.Path(os.environ.get("AUGDIFF_CIFAR_ZIP", default))
    if not path.exists():
        message = f"real data not found at {path} (set AUGDIFF_CIFAR_ZIP)"
        if CI:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def cifar_small(cifar_zip, tmp_path_factory) -> pathlib.Path:
    """2 train + 2 test images per class cut from the CIFAR-10 zip."""
    import zipfile

    root = tmp_path_factory.mktemp("cifar_small")
    with zipfile.ZipFile(cifar_zip) as z:
        seen: dict[tuple[str, str], int] = {}
        for n in sorted(x for x in z.namelist() if x.endswith(".jpg")):
            _, split, cls, fname = n.split("/")
            if seen.get((split, cls), 0) >= 2:
                continue
            seen[(split, cls)] = seen.get((split, cls), 0) + 1
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            (root / split / cls / fname).write_bytes(z.read(n))
    return root
