"""Shared test set-up: 8 simulated CPU devices, the persistent compile cache, absl flags.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
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

import pathlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cache_dir() -> str:
    return os.environ.get("AUGDIFF_JAX_CACHE", str(REPO / ".jax_cache"))


from augdiff import distributed  # noqa: E402

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
        pytest.skip(f"real data not found at {path} (set AUGDIFF_CIFAR_ZIP)")
    return path
