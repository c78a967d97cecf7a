"""Compile an experiment's programs for a TPU (or GPU) topology and measure each one per chip.

For every :class:`augdiff.aot.programs.Program` of a config, on a topology of
:mod:`augdiff.aot.chips`:

- **HBM per chip** from ``compiled.memory_analysis()``: arguments + outputs + temporaries −
  aliased (donated) bytes, against the chip's HBM;
- **FLOPs per unit of work** (the program's own count, loops included) and the **compute
  floor**: FLOPs / the chip's dense bf16 peak, i.e. the time one chip needs per unit at 100 %
  utilisation; nothing runs faster;
- **collectives** in the compiled HLO (:mod:`augdiff.aot.hlo`): kind, count per call, bytes,
  and how many sit inside a loop;
- the **largest global batch that fits**: per-chip bytes are ``fixed + rows · per_row`` with
  ``fixed`` the arguments that do not grow with the batch (weights, optimiser state); one
  compile gives ``per_row`` (conservative: temporaries the size of the weights are counted as
  per-row);
- compile time on this machine.

The programs are traced for the TPU (:func:`augdiff.distributed.compiling_for`): no CPU-only
path (the im2col weight gradient, the CPU attention choice) reaches them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections

from augdiff import distributed
from augdiff.aot import chips, hlo
from augdiff.aot.programs import Program, programs_for

GIB = chips.GIB


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of an abstract tree (each leaf's shard under its sharding)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        if not hasattr(leaf, "shape"):
            continue
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += math.prod(shape) * jax.numpy.dtype(leaf.dtype).itemsize
    return int(total)


def memory(compiled: Any) -> dict[str, int]:
    """Per-device bytes of a compiled program (``memory_analysis()``)."""
    m = compiled.memory_analysis()
    out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "temp": int(m.temp_size_in_bytes), "alias": int(m.alias_size_in_bytes)}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def compile_program(program: Program, topology: chips.Topology, *,
                    flops: bool = True) -> dict[str, Any]:
    """Compile ``program`` (built on a mesh over ``topology``'s devices) and measure it."""
    row: dict[str, Any] = {"program": program.name, "stage": program.stage,
                           "topology": topology.name, "batch": program.batch,
                           "unit": program.unit}
    n_dev = len(topology.devices)
    t0 = time.perf_counter()
    try:
        with distributed.compiling_for(topology.platform), \
                distributed.mesh_context(program.mesh):
            compiled = program.fn.lower(*program.args).compile()
    except Exception as e:  # noqa: BLE001  (reported as one line, the next program goes on)
        row.update(compiled=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                   compile_s=time.perf_counter() - t0)
        return row
    row["compile_s"] = time.perf_counter() - t0
    mem = memory(compiled)
    fixed = sum(device_bytes(program.args[i]) for i in program.fixed_argnums)
    growing = sum(device_bytes(a) for i, a in enumerate(program.args)
                  if i not in program.fixed_argnums)
    # XLA drops arguments a program never reads (an eval step's optimiser state), so the
    # fixed bytes are at most what it keeps; a row costs at least its own input bytes.
    fixed = min(fixed, max(mem["argument"] - growing, 0))
    rows_per_device = max(program.batch // max(n_dev, 1), 1)
    per_row = max(mem["total"] - fixed, growing, 1) / rows_per_device
    hbm = topology.hbm_per_device
    # XLA:TPU reports no temporaries for some inference programs (an eval step): the bytes per
    # row are then unknown and no largest batch is claimed.
    max_rows = int(max(hbm - fixed, 0) // per_row) if mem["temp"] > 0 else None
    parsed = hlo.Program.parse(compiled.as_text())
    row.update(
        compiled=True, hbm_gib=mem["total"] / GIB, argument_gib=mem["argument"] / GIB,
        temp_gib=mem["temp"] / GIB, output_gib=mem["output"] / GIB, alias_gib=mem["alias"] / GIB,
        fixed_gib=fixed / GIB, chip_hbm_gib=hbm / GIB, fits=mem["total"] <= hbm,
        rows_per_device=rows_per_device,
        max_batch=None if max_rows is None else max_rows * n_dev,
        collectives=parsed.collective_summary(), host_transfers=len(parsed.host_transfers()),
        loops=parsed.loops())
    if flops:
        with distributed.compiling_for(topology.platform):
            per_unit = program.flops()
        row["gflop_per_unit"] = per_unit / 1e9
        row["floor_ms_per_unit"] = 1e3 * per_unit / topology.peak_per_device
    return row


def compile_config(config: ml_collections.ConfigDict, topology_name: str, *,
                   stage: str = "", batch: int = 0, only: str = "",
                   chips_per_host: tuple[int, int, int] | None = None,
                   target_config: str = "",
                   done: Iterable[str] = ()) -> Iterable[dict[str, Any]]:
    """Rows of :func:`compile_program` for every program of ``config`` on ``topology_name``,
    each yielded as soon as it is compiled (``stage`` / ``only`` select programs by stage or a
    substring of their name; ``batch`` replaces the config's global batch; ``done`` names
    programs already measured, which are skipped: a cut run resumes)."""
    topology = chips.topology_devices(topology_name, chips_per_host, target_config)
    mesh = distributed.mesh_from_config(config, devices=topology.devices)
    with distributed.compiling_for(topology.platform):
        programs = programs_for(config, mesh)
    done = set(done)
    for program in programs:
        if stage and stage not in program.stage.split("/"):
            continue
        if only and only.lower() not in program.name.lower():
            continue
        if program.name in done:
            continue
        if batch and program.rebuild is not None:
            with distributed.compiling_for(topology.platform):
                program = dataclasses.replace(program.rebuild(batch), mesh=mesh)
        yield compile_program(program, topology)


def collectives_text(summary: dict[str, dict[str, int]]) -> str:
    if not summary:
        return "none"
    parts = []
    for kind, s in sorted(summary.items()):
        loop = f", {s['in_loop']} in a loop" if s["in_loop"] else ""
        parts.append(f"{kind} ×{s['count']} ({_bytes(s['bytes'])}{loop})")
    return "; ".join(parts)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


HEADER = ("| program | stage | global batch | HBM / chip (args + temp) | fits | GFLOP / unit "
          "| floor / unit | largest global batch | collectives per call | compile |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def markdown_row(row: dict[str, Any]) -> str:
    if not row.get("compiled"):
        return (f"| {row['program']} | {row['stage']} | {row['batch']} | not compiled: "
                f"{row.get('error', '?')} | | | | | | {row.get('compile_s', 0):.0f} s |")
    fits = "yes" if row["fits"] else f"**no** ({row['hbm_gib']:.3g} > {row['chip_hbm_gib']:.3g})"
    floor = row.get("floor_ms_per_unit")
    return (f"| {row['program']} | {row['stage']} | {row['batch']} "
            f"| {row['hbm_gib']:.3g} GiB ({row['argument_gib']:.3g} + {row['temp_gib']:.3g}) "
            f"of {row['chip_hbm_gib']:.3g} | {fits} "
            f"| {row.get('gflop_per_unit', float('nan')):,.4g} per {row['unit']} "
            f"| {'' if floor is None else f'{floor:.3g} ms'} | {_max_batch(row)} "
            f"| {collectives_text(row['collectives'])} | {row['compile_s']:.0f} s |")


def _max_batch(row: dict[str, Any]) -> str:
    if row.get("max_batch") is None:
        return "n/a (no temporaries reported)"
    return f"≈{row['max_batch']:,}"


def one_line(row: dict[str, Any]) -> str:
    """A failed or non-fitting program as one line naming it and the bytes."""
    if not row.get("compiled"):
        return f"augdiff compile: {row['program']} ({row['topology']}): {row['error']}"
    return (f"augdiff compile: {row['program']} ({row['topology']}, global batch "
            f"{row['batch']}) does not fit: {row['hbm_gib'] * GIB:,.0f} bytes per chip > "
            f"{row['chip_hbm_gib'] * GIB:,.0f} of HBM; largest batch that fits "
            f"{_max_batch(row)}")


def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows a previous (possibly cut) run wrote to ``path`` (JSON lines), the last one of
    each program and topology, in the order they were first measured."""
    if not path or not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: measured again
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        latest[(r.get("topology", ""), r.get("program", ""))] = r
    return list(latest.values())
