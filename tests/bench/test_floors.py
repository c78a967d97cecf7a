"""``benchmarks/steps.floors``: FLOPs, memory and the H100/H200 floors of a step whose cost is
known in closed form (a batched matmul y = x W: 2·B·K·N FLOPs)."""

import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

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


def test_conv_weight_gradient_flops_are_counted_whole(monkeypatch):
    """On the CPU, augdiff's weight gradient sums chunked GEMMs in a ``lax.scan``, whose body
    XLA's cost analysis counts once; the FLOPs of a step are taken on the accelerator's path,
    so they equal the closed form: a 3×3 stride-1 'VALID' convolution of an N×H×W×C input into
    O channels has N·Ho·Wo·9·C·O multiply-adds, and its weight gradient as many."""
    from augdiff.models import conv as aconv

    monkeypatch.setenv("AUGDIFF_CONV_WGRAD", "matmul")
    monkeypatch.setattr(aconv, "DIRECT_PATCH_BYTES", 0)
    monkeypatch.setattr(aconv, "PATCH_BYTES", 1)  # one image per scanned chunk
    n, h, c, o = 8, 10, 4, 6
    x = jnp.ones((n, h, h, c))
    w = jnp.ones((3, 3, c, o))

    def wgrad(x, w):
        return jax.grad(lambda v: aconv.conv_general_dilated(
            x, v, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum())(w)

    step = S.Step("wgrad", jax.jit(wgrad), (x, w), batch=n)
    want = 2 * n * (h - 2) ** 2 * 9 * c * o
    counted_in_scan = step.fn.lower(x, w).cost_analysis()["flops"]
    assert counted_in_scan < want / 2  # the scan body once: what model_flops must avoid
    assert abs(S.model_flops(step) - want) / want < 0.05
    assert abs(S.floors(step)["gflop_per_call"] * 1e9 - want) / want < 0.05
