"""Accelerator chips (datasheet figures) and TPU topologies by name, for ahead-of-time compiles.

A topology is named as Cloud TPU names slices, ``<chip>:<chips per axis>``: ``v5e:2x4`` (a
v5e-8, one host), ``v5p:2x2x1`` (a v5p-8: four chips), ``v6e:2x4``, ``v5e:16x16`` (a v5e-256,
64 hosts of 4 chips). ``libtpu`` (``pip install "jax[tpu]"`` at the installed jax version)
describes its devices with no TPU present (:func:`topology_devices`).

GPUs: ``h100:8`` (one host of 8), ``h200:2x8`` (2 hosts of 8). JAX's CUDA plugin
(``pip install "jax[cuda12-local]"`` at the installed jax version: the plugin without the CUDA
libraries) describes them with no GPU and no driver, given the GPU's XLA target description
(a ``GpuTargetConfigProto`` in text form: ``--target-config FILE``, or
``AUGDIFF_GPU_TARGET_CONFIG``). Run any jitted function on the GPU machine with
``XLA_FLAGS=--xla_dump_to=DIR`` and XLA writes it there as ``*.gpu_target_config.pbtxt``.

Hosts: a v5e / v6e slice of 8 chips or fewer is one host (``2x4``: 8 chips per host, as the
v5litepod-8 / v6e-8 VMs); larger slices have 4 chips per host (``2x2``), as Cloud TPU builds
them. ``chips_per_host`` overrides it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip: its HBM and its dense bf16 peak (no sparsity), from the vendor's
    datasheet (``source``)."""

    name: str
    hbm_bytes: float
    peak_bf16_flops: float
    source: str


# Cloud TPU "System architecture" pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e): per
# chip, bf16 peak and HBM capacity. NVIDIA H100 / H200 SXM datasheets: dense bf16 tensor-core
# peak (989.4 TFLOPS; the datasheets' 1,979 is "with sparsity") and HBM.
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, "Cloud TPU v4 docs: 275 TFLOPS bf16, 32 GiB HBM2"),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, "Cloud TPU v5e docs: 197 TFLOPS bf16, 16 GiB HBM2"),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12,
                "Cloud TPU v5p docs: 459 TFLOPS bf16, 95 GiB HBM2e"),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, "Cloud TPU v6e docs: 918 TFLOPS bf16, 32 GiB HBM"),
    "h100": Chip("H100 SXM", 80e9, 989.4e12, "NVIDIA H100 datasheet: 989 TFLOPS dense bf16, 80 GB"),
    "h200": Chip("H200 SXM", 141e9, 989.4e12,
                 "NVIDIA H200 datasheet: 989 TFLOPS dense bf16, 141 GB"),
}
TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")
GPU_CHIPS = ("h100", "h200")
_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
_GPU_NAME = re.compile(r"^(h100|h200):(?:(\d+)x)?(\d+)$")
# Fields of newer XLA target descriptions that the installed jaxlib's proto may not know.
_NEWER_TARGET_FIELDS = ("collective_memory_granularity",)


class TopologyError(ValueError):
    """A topology name that is malformed, unknown, or that libtpu cannot describe."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    chip: Chip
    devices: tuple[Any, ...]
    devices_per_chip: int
    platform: str = "tpu"

    @property
    def processes(self) -> int:
        return len({d.process_index for d in self.devices})

    @property
    def hbm_per_device(self) -> float:
        return self.chip.hbm_bytes / self.devices_per_chip

    @property
    def peak_per_device(self) -> float:
        return self.chip.peak_bf16_flops / self.devices_per_chip


def parse(name: str) -> tuple[str, tuple[int, ...]]:
    """``'v5e:2x4'`` → ``('v5e', (2, 4))``, ``'h100:2x8'`` → ``('h100', (2, 8))`` (hosts ×
    GPUs per host); a malformed name is a :class:`TopologyError`."""
    name = name.strip()
    gpu = _GPU_NAME.match(name)
    if gpu:
        return gpu.group(1), (int(gpu.group(2) or 1), int(gpu.group(3)))
    m = _NAME.match(name)
    if not m:
        raise TopologyError(f"topology {name!r}: expected <chip>:<AxB[xC]> with chip one of "
                            f"{', '.join(TPU_CHIPS)} (e.g. v5e:2x4, v5p:2x2x1, v6e:2x4, "
                            f"v5e:16x16), or <gpu>:[hosts x]gpus with gpu one of "
                            f"{', '.join(GPU_CHIPS)} (e.g. h100:8, h200:2x8)")
    return m.group(1), tuple(int(x) for x in m.group(2).split("x"))


def default_chips_per_host(chip: str, dims: tuple[int, ...]) -> tuple[int, int, int] | None:
    """Cloud TPU's host size for a slice (module docstring); None = libtpu's default."""
    chips = math.prod(dims)
    if chip in ("v5e", "v6e"):
        if chips == 1:
            return (1, 1, 1)
        if chips <= 8 and len(dims) == 2:
            return (dims[0], dims[1], 1)
    return None


def ensure_libtpu_env() -> None:
    """libtpu's environment for compiling with no TPU: share its lock with other processes
    (tests and benchmarks run side by side), skip the TPU VM metadata query and name this host
    as the only worker (quiets libtpu's start-up warnings). The process itself computes on the
    CPU (``jax_platforms=cpu`` when no backend has started yet), so that compiling on a TPU VM
    never takes the chips of a job running there."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    import jax
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized() and not jax.config.jax_platforms:
        jax.config.update("jax_platforms", "cpu")


def gpu_topology_devices(name: str, target_config: str = "") -> Topology:
    """The compile-only devices of GPU topology ``name`` (needs JAX's CUDA plugin and the
    GPU's target description; no GPU, no driver)."""
    chip, (hosts, per_host) = parse(name)
    path = target_config or os.environ.get("AUGDIFF_GPU_TARGET_CONFIG", "")
    if not path:
        raise TopologyError(f"topology {name}: a GPU target needs its XLA target description "
                            "(--target-config FILE or AUGDIFF_GPU_TARGET_CONFIG; see "
                            "augdiff.aot.chips)")
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise TopologyError(f"topology {name}: cannot read the target description {path}: "
                            f"{e.strerror}") from e
    text = "\n".join(line for line in text.splitlines()
                     if line.strip().split(":")[0] not in _NEWER_TARGET_FIELDS)
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError as e:
        raise TopologyError(f"topology {name}: JAX's CUDA plugin is not installed (pip install "
                            "\"jax[cuda12-local]==<the installed jax version>\")") from e
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="cuda", topology=f"1x{hosts}x{per_host}",
                                            target_config=text)
    except Exception as e:  # noqa: BLE001
        raise TopologyError(f"topology {name}: the CUDA plugin refuses it: "
                            f"{str(e).splitlines()[0]}") from e
    return Topology(name, CHIPS[chip], tuple(desc.devices), 1, platform="gpu")


def topology_devices(name: str, chips_per_host: tuple[int, int, int] | None = None,
                     target_config: str = "") -> Topology:
    """The compile-only devices of topology ``name``: a TPU slice (needs libtpu; no TPU) or a
    GPU cluster (:func:`gpu_topology_devices`)."""
    chip, dims = parse(name)
    if chip in GPU_CHIPS:
        ensure_libtpu_env()  # the CPU as this process's backend
        return gpu_topology_devices(name, target_config)
    ensure_libtpu_env()
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise TopologyError(f"topology {name}: libtpu is not installed (pip install "
                            "\"jax[tpu]==<the installed jax version>\", or augdiff's [tpu] "
                            "extra)") from e
    from jax.experimental import topologies

    bounds = chips_per_host or default_chips_per_host(chip, dims)
    kwargs = {"chips_per_host_bounds": list(bounds)} if bounds else {}
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
    except Exception as e:  # noqa: BLE001  (libtpu's own error, one line)
        raise TopologyError(f"topology {name}: libtpu refuses it: "
                            f"{str(e).splitlines()[0]}") from e
    devices = tuple(desc.devices)
    coords = {tuple(d.coords) for d in devices}
    return Topology(name, CHIPS[chip], devices, max(len(devices) // max(len(coords), 1), 1))
