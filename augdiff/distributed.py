"""Mesh, sharding rules and multi-process helpers: the one home for how arrays are laid out.

Models never mention devices. Every stage builds a mesh from its config (``config.mesh``),
shards the batch over the ``data`` axis and keeps parameters replicated (or sharded over
``fsdp`` when asked), following the maxdiffusion habit of keeping sharding rules apart
from model code.

Key conventions
- ``make_mesh(data=-1, fsdp=1)``: a 2-D mesh ``('data', 'fsdp')`` over all devices of all
  processes; ``-1`` means "whatever is left".
- ``batch_sharding(mesh)``: leading (batch) axis split over ``('data', 'fsdp')``.
- ``replicated(mesh)``: the same array on every device.
- ``pad_to_multiple`` / ``unpad``: a batch that does not divide the device count is padded
  (by repeating its last row) and trimmed afterwards, never dropped.
- ``host_local_to_global`` / ``global_to_host_local``: multi-process arrays, each process
  holding its own rows.
- ``target_platform()`` / ``compiling_for(platform)``: the platform a program traced now will
  run on. It is the default backend, except inside ``compiling_for('tpu')`` (ahead-of-time
  compilation for a TPU topology from a CPU machine, ``augdiff compile``): code that picks a
  platform-specific path (the CPU convolution weight gradient, the SD attention kernel) asks
  this, never ``jax.default_backend()``, so a TPU program never carries a CPU-only path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXES = ("data", "fsdp")
PLATFORMS = ("cpu", "gpu", "tpu")
_TARGETS: list[str] = []

_DISTRIBUTED_INITIALIZED = False


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Call ``jax.distributed.initialize`` once, when a multi-process launch asks for it.

    Arguments fall back to the environment variables ``AUGDIFF_COORDINATOR``,
    ``AUGDIFF_NUM_PROCESSES``, ``AUGDIFF_PROCESS_ID`` and ``AUGDIFF_LOCAL_DEVICE_IDS``
    (comma-separated). ``AUGDIFF_DISTRIBUTED=1`` without a coordinator lets JAX detect the
    cluster (TPU VM slice, SLURM, Open MPI). With none of these set this is a no-op, so a
    plain single-host run never blocks waiting for peers.
    """
    global _DISTRIBUTED_INITIALIZED
    if _DISTRIBUTED_INITIALIZED:
        return
    coordinator_address = coordinator_address or os.environ.get("AUGDIFF_COORDINATOR")
    if num_processes is None and os.environ.get("AUGDIFF_NUM_PROCESSES"):
        num_processes = int(os.environ["AUGDIFF_NUM_PROCESSES"])
    if process_id is None and os.environ.get("AUGDIFF_PROCESS_ID"):
        process_id = int(os.environ["AUGDIFF_PROCESS_ID"])
    # AUGDIFF_DISTRIBUTED=1 (set by the launch/ scripts) lets JAX detect the cluster itself:
    # TPU VM slices, SLURM and Open MPI are recognised by jax.distributed.initialize().
    auto_cluster = os.environ.get("AUGDIFF_DISTRIBUTED", "0") == "1"
    if coordinator_address is None and not auto_cluster:
        return
    kwargs: dict[str, Any] = {}
    if coordinator_address is not None:
        kwargs.update(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    if local_device_ids is None and os.environ.get("AUGDIFF_LOCAL_DEVICE_IDS"):
        local_device_ids = [int(i) for i in os.environ["AUGDIFF_LOCAL_DEVICE_IDS"].split(",")]
    if local_device_ids is not None:
        kwargs["local_device_ids"] = list(local_device_ids)
    # CPU processes need a collectives backend for cross-process reductions (tests on
    # localhost); accelerator backends ignore this option.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    _DISTRIBUTED_INITIALIZED = True
    if jax.process_count() > 1:
        # Gloo builds its communicator lazily, at the first collective, with a fixed 30 s
        # deadline; processes that drift apart (one still compiling) miss it. Meet at a
        # coordination-service barrier first, then run one tiny collective over every device
        # so the communicator exists before any stage starts.
        barrier("augdiff_initialized")
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("augdiff_initialized")


def target_platform() -> str:
    """``'cpu'``, ``'gpu'`` or ``'tpu'``: where the program being traced will run (the innermost
    :func:`compiling_for`, else ``jax.default_backend()``)."""
    if _TARGETS:
        return _TARGETS[-1]
    return target_platform_of_backend()


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """Trace the programs built inside the block for ``platform`` (one of :data:`PLATFORMS`),
    whatever backend this process runs on. Clears JAX's trace caches on entry and exit, so a
    function traced for one platform is never handed back for another."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform {platform!r}: choose one of {', '.join(PLATFORMS)}")
    jax.clear_caches()
    _TARGETS.append(platform)
    # A program compiled for another platform is not one this process can load back: keep it
    # out of the persistent compilation cache.
    cache = jax.config.jax_enable_compilation_cache
    if platform != target_platform_of_backend():
        jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        _TARGETS.pop()
        jax.config.update("jax_enable_compilation_cache", cache)
        jax.clear_caches()


def target_platform_of_backend() -> str:
    backend = jax.default_backend()
    return "gpu" if backend in ("cuda", "rocm") else backend


def mesh_context(mesh: Mesh | None) -> contextlib.AbstractContextManager[Any]:
    """Trace (and run) the programs of the block on ``mesh`` (``jax.set_mesh``): the mesh
    :func:`per_shard` splits kernels over. ``None`` changes nothing."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def per_shard(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on each device's rows of the batch axis of the mesh in context
    (:func:`mesh_context`), by ``shard_map``; without a mesh (or with one batch shard) just
    ``fn(*args)``. For kernels XLA cannot partition itself (Pallas / Mosaic custom calls):
    every example is independent, so each device runs the kernel on its own rows."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else tuple(a for a in DATA_AXES if a in mesh.axis_names
                                       and mesh.shape[a] > 1)
    if not axes:
        return fn(*args)
    spec = P(axes)
    return jax.shard_map(fn, in_specs=tuple(spec for _ in args), out_specs=spec,
                         check_vma=False)(*args)


def barrier(name: str, timeout_s: float = 900.0) -> None:
    """Block until every process reaches ``name`` (no-op for one process).

    Uses the coordination service (no device collective, so no Gloo deadline): call it after
    compiling a step and before its first run, so that no process enters a collective more
    than a moment before the others.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        return
    client.wait_at_barrier(name, int(timeout_s * 1000))


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``('data', 'fsdp')`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of data/fsdp may be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} does not cover {n} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), DATA_AXES)


def mesh_from_config(config: Any, devices: Sequence[Any] | None = None) -> Mesh:
    """Build the mesh a config describes (``config.mesh.data``, ``config.mesh.fsdp``) over
    ``devices`` (default: every device of every process; ``augdiff compile`` passes a TPU
    topology's devices)."""
    mesh_cfg = config.get("mesh", None) if hasattr(config, "get") else None
    if mesh_cfg is None:
        return make_mesh(devices=devices)
    return make_mesh(data=int(mesh_cfg.get("data", -1)), fsdp=int(mesh_cfg.get("fsdp", 1)),
                     devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over every device of the mesh."""
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in DATA_AXES]))


def pad_to_multiple(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad the leading axis of every leaf to a multiple of ``multiple`` by repeating the last row.

    Returns the padded tree and the original length, for :func:`unpad`.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return tree, 0
    n = int(leaves[0].shape[0])
    target = -(-n // multiple) * multiple if n else multiple
    if target == n:
        return tree, n

    def pad(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        reps = target - n
        xp = jnp if isinstance(x, jax.Array) else np
        tail = xp.repeat(x[-1:], reps, axis=0) if n else xp.zeros((reps,) + x.shape[1:], x.dtype)
        return xp.concatenate([x, tail], axis=0)

    return jax.tree_util.tree_map(pad, tree), n


def unpad(tree: Any, n: int) -> Any:
    return jax.tree_util.tree_map(lambda x: x[:n], tree)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Place a host batch (identical on every process) on the mesh, split along axis 0."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def host_local_to_global(tree: Any, mesh: Mesh) -> Any:
    """Assemble per-process rows (each process passes its own slice) into one global array."""
    if jax.process_count() == 1:
        return shard_batch(tree, mesh)
    from jax.experimental import multihost_utils

    return multihost_utils.host_local_array_to_global_array(tree, mesh, P(DATA_AXES))


def global_to_host_local(tree: Any, mesh: Mesh) -> Any:
    """This process's rows of a global batch-sharded array, as numpy."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    local = multihost_utils.global_array_to_host_local_array(tree, mesh, P(DATA_AXES))
    return jax.tree_util.tree_map(np.asarray, local)


def gather_to_host(tree: Any) -> Any:
    """Every row of a global array on every process, as numpy (for small results).

    An array that lives on this process's devices only (a process-local mesh, e.g. each
    process generating its own examples) is returned as it is: gathering it across processes
    would hand back other processes' rows."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    def leaf(x: Any) -> np.ndarray:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(leaf, tree)


def process_slice(
    n: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """Contiguous rows ``[start, stop)`` of ``n`` that belong to this process."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    per = -(-n // pc)
    return slice(min(pi * per, n), min((pi + 1) * per, n))


def enable_compilation_cache(path: str | None = None) -> None:
    """Turn on JAX's persistent compilation cache (cuts repeat compiles 2-5x)."""
    path = path or os.environ.get("AUGDIFF_JAX_CACHE", os.path.expanduser("~/.cache/augdiff/jax"))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def describe(mesh: Mesh | None = None) -> dict[str, Any]:
    """Process index/count, devices and mesh shape, for ``augdiff env`` and run logs."""
    info: dict[str, Any] = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "backend": jax.default_backend(),
        "local_devices": [str(d) for d in jax.local_devices()],
        "global_device_count": jax.device_count(),
    }
    if mesh is not None:
        info["mesh"] = dict(mesh.shape)
    return info
