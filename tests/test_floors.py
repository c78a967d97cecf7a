"""``benchmarks/steps.floors``: FLOPs, memory and the H100/H200 floors of a step whose cost is
known in closed form (a batched matmul y = x W: 2·B·K·N FLOPs)."""

import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import steps as S  # noqa: E402


def test_floors_of_a_matmul():
    b, k, n = 64, 256, 512
    w = jax.ShapeDtypeStruct((k, n), jnp.float32)
    x = jax.ShapeDtypeStruct((b, k), jnp.float32)
    step = S.Step("matmul", jax.jit(lambda w, x: x @ w), (w, x), batch=b, calls=10)
    r = S.floors(step)
    flops = 2 * b * k * n
    assert abs(r["gflop_per_call"] * 1e9 - flops) / flops < 0.01
    assert abs(r["gflop_per_image"] * 1e9 - flops * 10 / b) / flops < 0.01
    # 989.4 TFLOPS dense bf16: floor per image-unit = FLOPs * calls / batch / peak
    want_ms = 1e3 * flops * 10 / b / 989.4e12
    assert abs(r["floor_ms_per_unit[H100 SXM (80 GB)]"] - want_ms) / want_ms < 0.01
    # weights are fixed (k*n*4 bytes); per image at least its input and output rows
    assert abs(r["fixed_gib"] * 2**30 - k * n * 4) < 1
    per_image_min = (k + n) * 4
    assert r["peak_gib"] * 2**30 >= k * n * 4 + b * per_image_min
    assert r["max_batch[H200 SXM (141 GB)]"] > r["max_batch[H100 SXM (80 GB)]"] > 0
    assert r["max_batch[H100 SXM (80 GB)]"] <= (80e9 - k * n * 4) // per_image_min
