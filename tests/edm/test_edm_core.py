"""EDM formulation (augdiff.edm.core) against the formulas of Karras et al. 2022, Table 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.edm.core import (
    EDMConfig,
    denoise,
    edm_loss,
    loss_weight,
    preconditioning,
    sample_sigma_train,
    sigma_schedule,
)

SIGMA_DATA = 0.5


def table1_edm(sigma, sigma_data: float = SIGMA_DATA):
    """EDM preconditioning, Karras et al. 2022 Table 1 ("Ours" column), written out here:
    c_skip = σ_d²/(σ²+σ_d²), c_out = σ·σ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ¼ ln σ."""
    sigma = np.asarray(sigma, np.float64)
    total = sigma**2 + sigma_data**2
    return (sigma_data**2 / total, sigma * sigma_data / np.sqrt(total), 1 / np.sqrt(total),
            np.log(sigma) / 4)


def gaussian_net(mu: float, s: float, sigma_data: float = SIGMA_DATA):
    """Raw network F such that the preconditioned D is the ideal denoiser of N(mu, s^2 I):
    D(x; σ) = (s²x + σ²μ)/(s²+σ²), so F = (D − c_skip·x)/c_out with σ = exp(4·c_noise) and the
    Table 1 coefficients written in the test (not the library's preconditioning)."""

    def apply(params, x_in, c_noise, class_labels, *, train=False, rngs=None):
        sigma = jnp.exp(4.0 * c_noise).reshape((-1,) + (1,) * (x_in.ndim - 1))
        total = sigma**2 + sigma_data**2
        c_skip = sigma_data**2 / total
        c_out = sigma * sigma_data / jnp.sqrt(total)
        c_in = 1 / jnp.sqrt(total)
        x = x_in / c_in
        d = (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)
        return (d - c_skip * x) / c_out

    return apply


def zero_net(params, x_in, c_noise, class_labels, *, train=False, rngs=None):
    return jnp.zeros_like(x_in)


def test_sigma_schedule_matches_eq5_endpoints_and_monotone():
    for n, (lo, hi, rho) in [(18, (0.002, 80.0, 7.0)), (5, (0.01, 10.0, 3.0))]:
        s = np.asarray(sigma_schedule(n, lo, hi, rho), np.float64)
        i = np.arange(n)
        ref = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        assert s.shape == (n + 1,)
        np.testing.assert_allclose(s[:-1], ref, rtol=2e-5)
        np.testing.assert_allclose([s[0], s[n - 1], s[n]], [hi, lo, 0.0], rtol=1e-5)
        assert np.all(np.diff(s) < 0)


@pytest.mark.parametrize("bad", [1, 0, 2.5])
def test_sigma_schedule_rejects_bad_step_count(bad):
    with pytest.raises(ValueError, match="num_steps"):
        sigma_schedule(bad)


def test_edm_config_rejects_bad_values():
    with pytest.raises(ValueError, match="sigma_min"):
        EDMConfig(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMConfig(sigma_data=0.0)


def test_preconditioning_and_loss_weight_equal_table1_on_random_inputs():
    rng = np.random.default_rng(0)
    sigma = np.exp(rng.normal(-1.2, 2.0, size=1000))
    for sd in (0.5, 1.3):
        c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64)
                                        for c in preconditioning(sigma, sd))
        r_skip, r_out, r_in, r_noise = table1_edm(sigma, sd)
        np.testing.assert_allclose(c_skip, r_skip, rtol=1e-5)
        np.testing.assert_allclose(c_out, r_out, rtol=1e-5)
        np.testing.assert_allclose(c_in, r_in, rtol=1e-5)
        np.testing.assert_allclose(c_noise, r_noise, rtol=1e-5, atol=1e-6)
        lam = np.asarray(loss_weight(sigma, sd), np.float64)
        np.testing.assert_allclose(lam, (sigma**2 + sd**2) / (sigma * sd) ** 2, rtol=1e-5)
        # Design properties (EDM App. B.6): unit-variance input; λ = 1/c_out² (unit target).
        np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-5)
        np.testing.assert_allclose(lam * c_out**2, 1.0, rtol=1e-5)


def test_denoise_is_cskip_x_plus_cout_F_in_float32():
    key = jax.random.key(0)
    x = jax.random.normal(key, (4, 8, 8, 3))
    sigma = jnp.array([0.01, 0.3, 2.0, 50.0])
    seen = {}

    def net(params, x_in, c_noise, labels, *, train=False, rngs=None):
        seen.update(x_in=x_in, c_noise=c_noise, labels=labels, train=train)
        return (params * x_in).astype(jnp.bfloat16)  # a network running in bf16

    d = denoise(net, 2.0, x, sigma, jnp.arange(4), train=True)
    c_skip, c_out, c_in, c_noise = (c.astype(np.float32)
                                    for c in table1_edm(np.asarray(sigma).reshape(-1, 1, 1, 1)))
    np.testing.assert_allclose(seen["x_in"], c_in * x, rtol=1e-6)
    np.testing.assert_allclose(seen["c_noise"], c_noise.reshape(4), rtol=1e-6)
    assert seen["train"] is True and seen["c_noise"].shape == (4,)
    np.testing.assert_array_equal(seen["labels"], np.arange(4))
    f = (2.0 * np.asarray(seen["x_in"])).astype(jnp.bfloat16).astype(np.float32)
    want = c_skip * np.asarray(x) + c_out * f
    assert d.dtype == jnp.float32
    np.testing.assert_allclose(d, want, rtol=1e-6, atol=1e-6)
    # A scalar σ is broadcast to the batch; a wrong count is a clear error.
    np.testing.assert_allclose(denoise(net, 2.0, x, 0.3), denoise(net, 2.0, x, jnp.full(4, 0.3)))
    with pytest.raises(ValueError, match="sigma has 3 values"):
        denoise(net, 2.0, x, jnp.ones(3))


def test_ideal_gaussian_denoiser_through_preconditioning():
    mu, s = 0.2, 0.7
    x = jax.random.normal(jax.random.key(1), (3, 16))
    for sigma in (0.01, 1.0, 30.0):
        d = denoise(gaussian_net(mu, s), None, x, sigma)
        np.testing.assert_allclose(d, (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2),
                                   rtol=1e-4, atol=1e-5)
    # one σ per row, and a σ_data other than the default
    sig = jnp.array([0.05, 0.9, 12.0]).reshape(3, 1)
    d = denoise(gaussian_net(mu, s, sigma_data=1.3), None, x, sig.reshape(3), sigma_data=1.3)
    np.testing.assert_allclose(d, (s**2 * x + sig**2 * mu) / (s**2 + sig**2), rtol=1e-4,
                               atol=1e-5)


def test_sample_sigma_train_is_lognormal():
    cfg = EDMConfig()
    s = np.asarray(sample_sigma_train(jax.random.key(2), (20000,), cfg))
    assert np.all(s > 0)
    assert abs(np.log(s).mean() - cfg.P_mean) < 0.03
    assert abs(np.log(s).std() - cfg.P_std) < 0.03


def _expected_loss(s: float, cfg: EDMConfig, ideal: bool) -> float:
    """E over ln σ ~ N(P_mean, P_std²) of λ(σ)·E‖D − y‖²/pixel for y ~ N(μ, s²), by
    Gauss-Hermite quadrature. Ideal denoiser: error variance s²σ²/(s²+σ²). Zero network
    (D = c_skip·(y+n), data mean 0): (1 − c_skip)²s² + c_skip²σ²."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    sigma = np.exp(cfg.P_mean + cfg.P_std * z)
    sd = cfg.sigma_data
    lam = (sigma**2 + sd**2) / (sigma * sd) ** 2
    if ideal:
        err = s**2 * sigma**2 / (s**2 + sigma**2)
    else:
        c_skip = sd**2 / (sigma**2 + sd**2)
        err = (1 - c_skip) ** 2 * s**2 + c_skip**2 * sigma**2
    return float(np.sum(w * lam * err) / np.sum(w))


@pytest.mark.parametrize("s", [SIGMA_DATA, 0.25])
def test_edm_loss_expected_value_with_ideal_and_zero_denoisers(s):
    cfg = EDMConfig()
    mu = 0.3
    key_data, key_loss = jax.random.split(jax.random.key(3))
    x0 = mu + s * jax.random.normal(key_data, (4096, 4, 4, 3))
    loss_fn = jax.jit(lambda k, x, ideal: edm_loss(
        k, gaussian_net(mu, s) if ideal else zero_net, None, x, None, cfg=cfg),
        static_argnums=2)
    ideal = np.asarray(loss_fn(key_loss, x0, True))
    assert ideal.shape == (4096,)
    want = _expected_loss(s, cfg, ideal=True)
    if s == SIGMA_DATA:  # σ_d = s makes E[loss | σ] = 1 for every σ (EDM's unit-variance target).
        assert want == pytest.approx(1.0, rel=1e-9)
    assert ideal.mean() == pytest.approx(want, rel=0.03)
    # Zero network on zero-mean data: loss = λ·E‖c_skip(y+n) − y‖², again 1 when s = σ_d.
    zero = np.asarray(loss_fn(key_loss, x0 - mu, False))
    assert zero.mean() == pytest.approx(_expected_loss(s, cfg, ideal=False), rel=0.03)


def test_edm_loss_is_a_pure_function_of_its_key():
    x0 = jax.random.normal(jax.random.key(4), (8, 4, 4, 3)) * 0.5
    f = gaussian_net(0.0, 0.5)
    a = edm_loss(jax.random.key(5), f, None, x0, None)
    b = edm_loss(jax.random.key(5), f, None, x0, None)
    c = edm_loss(jax.random.key(6), f, None, x0, None)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="batched"):
        edm_loss(jax.random.key(5), f, None, jnp.ones(3), None)
