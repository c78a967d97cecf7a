"""EDM samplers against the closed-form probability-flow ODE of Gaussian data.

For x ~ N(μ, s²I) the ideal denoiser is D(x; σ) = (s²x + σ²μ)/(s²+σ²) and the ODE
dx/dσ = (x − D)/σ = (x − μ)·σ/(s²+σ²) has the solution
x(σ) = μ + (x(σ₀) − μ)·√((s²+σ²)/(s²+σ₀²)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff import distributed
from augdiff.edm.core import EDMConfig, denoise, sigma_schedule
from augdiff.edm.samplers import (
    euler_sampler,
    guided_denoiser,
    heun_sampler,
    nfe,
    sample,
    stochastic_sampler,
)
from augdiff.models.songunet import SongUNet, songunet_config

MU, S = 0.3, 0.4


def ideal(x, sigma):
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def exact(x_start, sigma_start, sigma_end):
    return MU + (x_start - MU) * np.sqrt((S**2 + sigma_end**2) / (S**2 + sigma_start**2))


def _errors(sampler, steps):
    x_T = 80.0 * jax.random.normal(jax.random.key(0), (512,))
    want = exact(np.asarray(x_T, np.float64), 80.0, 0.0)
    run = jax.jit(sampler, static_argnums=0)
    return [float(np.abs(np.asarray(run(ideal, x_T, sigma_schedule(n))) - want).max())
            for n in steps]


def test_heun_is_second_order_and_euler_first_order():
    steps = (16, 32, 64)
    heun, euler = _errors(heun_sampler, steps), _errors(euler_sampler, steps)
    heun_ratios = [a / b for a, b in zip(heun, heun[1:], strict=False)]
    euler_ratios = [a / b for a, b in zip(euler, euler[1:], strict=False)]
    assert all(3.3 < r < 5.5 for r in heun_ratios), (heun, heun_ratios)
    assert all(1.7 < r < 2.3 for r in euler_ratios), (euler, euler_ratios)
    assert heun[-1] < 0.1 * euler[-1]


def test_counted_nfe_matches_nfe():
    calls = []

    def counting(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return ideal(x, sigma)

    x_T = jnp.ones((4,))
    for name, fn in [("heun", heun_sampler), ("euler", euler_sampler)]:
        calls.clear()
        jax.block_until_ready(jax.jit(fn, static_argnums=0)(counting, x_T, sigma_schedule(18)))
        jax.effects_barrier()
        assert len(calls) == nfe(name, 18)
    assert nfe("heun", 18) == 35 and nfe("heun", 40) == 79 and nfe("stochastic", 18) == 35
    with pytest.raises(ValueError, match="unknown sampler"):
        nfe("ddim", 10)


@pytest.mark.parametrize("sampler,kw", [("heun", {}), ("euler", {}),
                                        ("stochastic", dict(S_churn=30.0, S_min=0.01, S_max=50))])
def test_samples_from_noise_have_data_mean_and_std(sampler, kw):
    # Euler is 1st order; churn (γ up to √2−1 per step) also needs more steps for 1% accuracy.
    steps = {"heun": 32, "euler": 256, "stochastic": 128}[sampler]
    draw = jax.jit(lambda k: sample(k, ideal, (40000,), steps, sampler, **kw))
    x = np.asarray(draw(jax.random.key(1)))
    # Monte-Carlo error of 40k draws: mean ±0.002·3, std ±0.0014·3; plus discretisation.
    assert abs(x.mean() - MU) < 0.01
    assert abs(x.std() - S) < 0.01


def test_stochastic_with_zero_churn_equals_heun():
    x_T = 80.0 * jax.random.normal(jax.random.key(2), (256,))
    sig = sigma_schedule(12)
    a = jax.jit(heun_sampler, static_argnums=0)(ideal, x_T, sig)
    b = jax.jit(functools.partial(stochastic_sampler, denoiser=ideal))(
        jax.random.key(3), x_T=x_T, sigmas=sig)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # With churn the path changes but stays a sample of the data.
    c = stochastic_sampler(jax.random.key(3), ideal, x_T, sig, S_churn=40.0)
    assert not np.allclose(a, c, atol=1e-3)


def test_stochastic_sampler_matches_a_transcription_of_edm_algorithm_2():
    """The loop of NVlabs/edm ``generate.py::edm_sampler`` in float64 numpy, fed the same ε_i."""
    n, churn, s_min, s_max, s_noise = 10, 5.0, 0.05, 20.0, 1.007
    key = jax.random.key(4)
    x_T = 80.0 * jax.random.normal(jax.random.key(5), (64,))
    t = np.asarray(sigma_schedule(n), np.float64)
    x = np.asarray(x_T, np.float64)
    for i in range(n):
        gamma = min(churn / n, np.sqrt(2) - 1) if s_min <= t[i] <= s_max else 0.0
        t_hat = t[i] + gamma * t[i]
        eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape), np.float64)
        x_hat = x + np.sqrt(t_hat**2 - t[i] ** 2) * s_noise * eps
        d_cur = (x_hat - ideal(x_hat, t_hat)) / t_hat
        x = x_hat + (t[i + 1] - t_hat) * d_cur
        if i < n - 1:
            d_prime = (x - ideal(x, t[i + 1])) / t[i + 1]
            x = x_hat + (t[i + 1] - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    got = jax.jit(stochastic_sampler, static_argnums=1, static_argnames=(
        "S_churn", "S_min", "S_max", "S_noise"))(
        key, ideal, x_T, sigma_schedule(n), S_churn=churn, S_min=s_min, S_max=s_max,
        S_noise=s_noise)
    np.testing.assert_allclose(np.asarray(got), x, rtol=1e-4, atol=1e-4)


def test_guided_denoiser_interpolates_and_extrapolates():
    def den(x, sigma, labels):  # a label-dependent denoiser: D = x/(1+σ²) + label
        return x / (1 + sigma**2) + labels[:, None]

    x = jnp.ones((3, 2))
    lab, unc = jnp.array([1.0, 2.0, 3.0]), jnp.zeros(3)
    for w in (0.0, 1.0, 2.5):
        d = guided_denoiser(den, lab, unc, w)(x, 1.0)
        np.testing.assert_allclose(d, 0.5 + w * lab[:, None] * jnp.ones((3, 2)), rtol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        guided_denoiser(den, lab, jnp.zeros(2), 1.0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(jax.random.key(0), ideal, (2,), 4, sampler="ddpm")
    with pytest.raises(ValueError, match="only apply to sampler='stochastic'"):
        sample(jax.random.key(0), ideal, (2,), 4, sampler="heun", S_churn=1.0)
    with pytest.raises(ValueError, match="1-D schedule"):
        heun_sampler(ideal, jnp.ones(2), jnp.ones((2, 2)))


@pytest.fixture(scope="module")
def tiny_net():
    """A small conditional SongUNet with random O(1) weights (no init compile: eval_shape)."""
    model = SongUNet(**songunet_config("tiny", model_channels=16, label_dim=4))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                            jnp.zeros(1), jnp.zeros(1, jnp.int32))
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(  # ~unit-gain random weights: fan_in = prod(shape[:-1])
        lambda l: (rng.standard_normal(l.shape) / np.sqrt(np.prod(l.shape[:-1]) or 1)
                   ).astype(np.float32), shapes)
    return model, params


def test_same_seed_same_samples_on_1_and_8_devices(tiny_net):
    model, params = tiny_net
    n, steps = 8, 3
    labels = jnp.arange(n, dtype=jnp.int32) % 4

    def draw(params, labels, key, sharding=None):
        den = lambda x, s: denoise(model.apply, params, x, s, labels)  # noqa: E731
        return sample(key, den, (n, 16, 16, 3), steps, "stochastic", sharding=sharding,
                      S_churn=10.0)

    key = jax.random.key(7)
    one = jax.jit(draw)(params, labels, key)
    assert len(one.sharding.device_set) == 1
    mesh = distributed.make_mesh()
    assert distributed.num_batch_shards(mesh) == 8
    p_rep = distributed.replicate(params, mesh)
    l_shard = distributed.shard_batch(labels, mesh)
    eight = jax.jit(functools.partial(draw, sharding=distributed.batch_sharding(mesh)),
                    out_shardings=distributed.batch_sharding(mesh))(p_rep, l_shard, key)
    assert len(eight.sharding.device_set) == 8
    assert np.isfinite(np.asarray(one)).all()
    # Equal up to float32 reassociation (per-device conv kernels); samples are O(1-10).
    np.testing.assert_allclose(np.asarray(one), np.asarray(eight), rtol=1e-3, atol=1e-3)
    # The labels really condition the samples (not a constant network).
    other = jax.jit(draw)(params, (labels + 1) % 4, key)
    assert np.abs(np.asarray(other) - np.asarray(one)).max() > 1e-3


def test_sample_starts_from_sigma_max_noise():
    # D(x; σ) = x makes every ODE step a no-op, so the sampler returns x_T = σ_max·n.
    for sampler in ("heun", "euler"):
        x_T = np.asarray(sample(jax.random.key(0), lambda x, s: x, (20000,), 4, sampler,
                                EDMConfig(sigma_max=20.0)))
        assert x_T.std() == pytest.approx(20.0, rel=0.03)
        assert abs(x_T.mean()) < 0.5
