"""Sharding properties of augdiff's programs as XLA:TPU compiles them (libtpu, no TPU).

Tiny models on a ``v5e:2x2`` topology (4 chips, data-parallel mesh), built by
:mod:`augdiff.aot.programs` from the test configs exactly as ``augdiff compile`` builds them:

- every sampling loop over a data-sharded mesh holds **no collective and no host transfer
  inside the loop** (each example is independent: generation is embarrassingly parallel), and
  its rows really are split over the chips;
- a data-parallel train step has **one gradient reduction**: all-reduces whose bytes are the
  gradient bytes (plus the scalar metrics, and BatchNorm's batch statistics for the
  classifier), and no all-gather, reduce-scatter, all-to-all or collective-permute. With bf16
  compute the weight-gradient products come out in bf16 before their cast to the float32
  parameters, and XLA reduces them there: the bytes lie between half and all of the float32
  gradient bytes;
- **no CPU-only path** is traced into a TPU program (the im2col weight gradient's custom VJP,
  the SD UNet's im2col convolutions and diffusers' einsum attention);
- a **multi-host topology** (``v5e:4x4``, 4 processes of 4 chips) compiles with the same code.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from augdiff import distributed
from augdiff.aot import chips, hlo, programs
from augdiff.aot.compile import compile_program
from augdiff.config import load_config

pytest.importorskip("libtpu", reason="the tpu test extra (libtpu) is not installed")
chips.ensure_libtpu_env()

QUICKSTART = "configs/quickstart.py:test"
OTHERS = ("all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _programs(spec: str, topology: str, overrides=()) -> tuple[chips.Topology, dict]:
    topo = chips.topology_devices(topology)
    config = load_config(spec, list(overrides))
    mesh = distributed.mesh_from_config(config, devices=topo.devices)
    with distributed.compiling_for("tpu"):
        progs = programs.programs_for(config, mesh)
    return topo, {p.name: p for p in progs}


def _compile(program: programs.Program) -> tuple[object, hlo.Program]:
    with distributed.compiling_for("tpu"), distributed.mesh_context(program.mesh):
        compiled = program.fn.lower(*program.args).compile()
    return compiled, hlo.Program.parse(compiled.as_text())


def _find(progs: dict, needle: str) -> programs.Program:
    found = [p for name, p in progs.items() if needle in name]
    assert len(found) == 1, (needle, list(progs))
    return found[0]


def _f32_bytes(tree) -> int:
    return sum(4 * math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="module")
def quickstart():
    return _programs(QUICKSTART, "v5e:2x2", ["--config.mixed.online.kind=edm"])


@pytest.fixture(scope="module")
def diffinv():
    # 32² images: 16² latents, whose 256-token self-attention takes the Pallas kernel, which
    # must run per shard inside the sharded programs
    return _programs("configs/diffinv_cifar10.py:smoke", "v5e:2x2",
                     ["--config.inversion.resolution=32"])


def _assert_rows_split(compiled, program, argnum: int, n_dev: int) -> None:
    """The per-row arguments reach the program split over every chip."""
    shardings = jax.tree_util.tree_leaves(compiled.input_shardings[0][argnum])
    args = jax.tree_util.tree_leaves(program.args[argnum])
    assert shardings
    for s, a in zip(shardings, args, strict=True):
        if len(a.shape) and a.shape[0] == program.batch:
            assert s.shard_shape(a.shape)[0] == program.batch // n_dev, (s, a.shape)


def _assert_parallel_loop(parsed: hlo.Program) -> None:
    assert parsed.loops() >= 1, "a sampler compiles to a loop"
    inside = [i.text[:160] for i in parsed.collectives(in_loop=True)]
    assert not inside, f"collectives inside the sampling loop: {inside}"
    host = [i.text[:160] for i in parsed.host_transfers()]
    assert not host, f"host transfers in the program: {host}"


def test_edm_sampler_loop_has_no_collective(quickstart):
    topo, progs = quickstart
    program = _find(progs, "EDM heun sampler")
    compiled, parsed = _compile(program)
    _assert_parallel_loop(parsed)
    _assert_rows_split(compiled, program, 2, len(topo.devices))


def test_online_refresh_loop_has_no_collective(quickstart):
    topo, progs = quickstart
    program = _find(progs, "online EDM refresh")
    compiled, parsed = _compile(program)
    _assert_parallel_loop(parsed)
    # the buffer's images come out split over the chips
    rows = compiled.output_shardings["image"].shard_shape((program.batch, 1))[0]
    assert rows == program.batch // len(topo.devices)


def test_sd_sampler_and_inversion_loops_have_no_collective(diffinv):
    topo, progs = diffinv
    sampler = _find(progs, "stage 2")
    compiled, parsed = _compile(sampler)
    _assert_parallel_loop(parsed)
    _assert_rows_split(compiled, sampler, 1, len(topo.devices))  # the initial noise
    inversion = _find(progs, "stage-1")
    compiled, parsed = _compile(inversion)
    _assert_parallel_loop(parsed)  # gradients are per-image conditionings: nothing to reduce
    _assert_rows_split(compiled, inversion, 1, len(topo.devices))  # the vectors


def _assert_one_gradient_reduction(parsed: hlo.Program, params, slack: int = 256) -> None:
    summary = parsed.collective_summary()
    grad_bytes = _f32_bytes(params)
    assert set(summary) == {"all-reduce"}, summary
    assert grad_bytes // 2 <= summary["all-reduce"]["bytes"] <= grad_bytes + slack, (
        summary, grad_bytes)
    assert not parsed.collectives(in_loop=True)


def test_edm_train_step_reduces_the_gradient_once(quickstart):
    _, progs = quickstart
    program = _find(progs, "EDM train step")
    _, parsed = _compile(program)
    _assert_one_gradient_reduction(parsed, program.args[0].params)


def test_classifier_train_step_reduces_gradients_and_batch_statistics(quickstart):
    _, progs = quickstart
    program = _find(progs, "preact_resnet_tiny train step")
    _, parsed = _compile(program)
    # BatchNorm over the global batch: per BN layer, sums (and sums of squares) of its
    # channels forward and their cotangents backward (≤ 4 vectors of C floats per layer).
    bn_bytes = 4 * _f32_bytes(program.args[0].batch_stats)
    _assert_one_gradient_reduction(parsed, program.args[0].params, bn_bytes + 256)


def test_eval_step_reduces_only_its_sums(quickstart):
    _, progs = quickstart
    _, parsed = _compile(_find(progs, "eval step"))
    summary = parsed.collective_summary()
    assert set(summary) <= {"all-reduce"}
    # four scalar sums and the per-class correct / count vectors (10 classes), f32
    assert summary.get("all-reduce", {"bytes": 0})["bytes"] <= 4 * 4 + 2 * 10 * 4


def _primitives(jaxpr) -> set[str]:
    out = set()
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for p in eqn.params.values():
            for j in (p if isinstance(p, list | tuple) else [p]):
                inner = getattr(j, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    out |= _primitives(inner)
                elif hasattr(j, "eqns"):
                    out |= _primitives(j)
    return out


def _traced_primitives(program: programs.Program, platform: str) -> set[str]:
    with distributed.compiling_for(platform):
        jaxpr = jax.make_jaxpr(program.fn.__wrapped__)(*programs.unsharded(program.args))
    return _primitives(jaxpr.jaxpr)


def test_no_cpu_weight_gradient_in_a_tpu_program(quickstart):
    """The CPU's im2col weight gradient is a custom VJP: traced for the CPU the train step
    holds it (the control), traced for the TPU it must not."""
    _, progs = quickstart
    program = _find(progs, "EDM train step")
    cpu = _traced_primitives(program, "cpu")
    tpu = _traced_primitives(program, "tpu")
    custom = {p for p in cpu if "custom_vjp" in p}
    assert custom, "control: the CPU trace should hold the im2col custom VJP"
    assert not {p for p in tpu if "custom_vjp" in p}, tpu


def test_no_cpu_unet_path_in_a_tpu_program(monkeypatch):
    """The SD UNet's CPU choices (im2col convolutions, diffusers' einsum attention) are off
    when tracing for a TPU: its convolutions stay ``conv_general_dilated``, its self-attention
    (256 tokens at 16² latents) goes to the Pallas flash kernel and its cross-attention to
    ``jax.nn.dot_product_attention``."""
    from augdiff.sd import architectures, attention, pipelines

    calls: list[str] = []
    real_dpa, real_flash = jax.nn.dot_product_attention, attention.flash_attention

    def counting_dpa(*a, **k):
        calls.append(f"xla:{a[0].shape[1]}x{a[1].shape[1]}")
        return real_dpa(*a, **k)

    def counting_flash(q, k, v, scale):
        calls.append(f"flash:{q.shape[1]}x{k.shape[1]}")
        return real_flash(q, k, v, scale)

    monkeypatch.setattr(jax.nn, "dot_product_attention", counting_dpa)
    monkeypatch.setattr(attention, "flash_attention", counting_flash)
    comps, params = architectures.abstract_sd(architectures.tiny_architecture("txt2img"),
                                              "float32")
    x = jax.ShapeDtypeStruct((2, 4, 16, 16), np.float32)
    ctx = jax.ShapeDtypeStruct((2, 77, int(comps.unet.cross_attention_dim)), np.float32)
    t = jax.ShapeDtypeStruct((), np.int32)

    def trace(platform: str) -> tuple[str, list[str]]:
        calls.clear()
        with distributed.compiling_for(platform):
            text = str(jax.make_jaxpr(
                lambda p, x, t, c: pipelines.unet_output(comps, p, x, t, c))(params, x, t, ctx))
        return text, list(calls)

    cpu, cpu_calls = trace("cpu")
    tpu, tpu_calls = trace("tpu")
    # control: on the CPU the convolutions on 8² inputs are im2col GEMMs and the attention
    # diffusers' einsums
    n_convs = sum(1 for leaf in jax.tree_util.tree_leaves_with_path(params["unet"])
                  if len(leaf[1].shape) == 4)
    assert cpu.count("conv_general_dilated") < n_convs and not cpu_calls
    assert tpu.count("conv_general_dilated") == n_convs
    assert "flash:256x256" in tpu_calls, tpu_calls  # the 16² level's self-attention
    assert all(c.startswith("flash") or c.endswith("x77") or c == "xla:64x64"
               for c in tpu_calls), tpu_calls


def test_multi_host_topology_compiles_with_the_same_code():
    topo, progs = _programs(QUICKSTART, "v5e:4x4")
    assert topo.processes == 4 and len(topo.devices) == 16
    train = _find(progs, "EDM train step")
    row = compile_program(train, topo, flops=False)
    assert row["compiled"] and row["fits"], row
    assert set(row["collectives"]) == {"all-reduce"}
    grad_bytes = _f32_bytes(train.args[0].params)
    assert grad_bytes // 2 <= row["collectives"]["all-reduce"]["bytes"] <= grad_bytes + 256
    sampler = _find(progs, "EDM heun sampler")
    _, parsed = _compile(sampler)
    _assert_parallel_loop(parsed)
