"""Classifier architectures, losses, metrics, learning-rate schedules and the optimizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from augdiff.models.classifiers import abstract_variables, get_classifier, param_count
from augdiff.train import losses
from augdiff.train.classifier import learning_rate_fn, make_optimizer

# Reference parameter counts (trainable parameters; BN running statistics excluded):
# torchvision resnet18/resnet50/resnext50_32x4d at 1000 classes, and the CIFAR PreActResNet18
# of kuangliu/pytorch-cifar at 10 classes.
REFERENCE_COUNTS = [
    ("preact_resnet18", 10, "cifar", 32, 11_171_146),
    ("resnet18", 1000, "imagenet", 224, 11_689_512),
    ("resnet50", 1000, "imagenet", 224, 25_557_032),
    ("resnext50_32x4d", 1000, "imagenet", 224, 25_028_904),
]


@pytest.mark.parametrize("name,classes,stem,size,expected", REFERENCE_COUNTS)
def test_param_counts_match_reference(name, classes, stem, size, expected):
    model = get_classifier(name, classes, width=64, stem=stem)
    variables = abstract_variables(model, size)
    assert param_count(variables["params"]) == expected


def test_width_scales_conv_params_quadratically():
    """Conv kernels grow with width^2: the width-128 PreActResNet18 has ~4x the parameters."""
    n64 = param_count(abstract_variables(get_classifier("preact_resnet18", 10, 64), 32)["params"])
    n128 = param_count(abstract_variables(get_classifier("preact_resnet18", 10, 128), 32)["params"])
    assert 3.9 < n128 / n64 < 4.01


def test_logit_and_feature_shapes_abstract():
    for name, feat in [("resnet50", 2048), ("resnext50_32x4d", 2048), ("resnet18", 512)]:
        model = get_classifier(name, 7, stem="imagenet")
        variables = abstract_variables(model, 64)
        x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
        logits = jax.eval_shape(lambda v, x, m=model: m.apply(v, x, train=False), variables, x)
        feats = jax.eval_shape(
            lambda v, x, m=model: m.apply(v, x, train=False, method="features"), variables, x
        )
        assert logits.shape == (2, 7) and logits.dtype == jnp.float32
        assert feats.shape == (2, feat)


@pytest.fixture(scope="session")
def tiny():
    model = get_classifier("preact_resnet_tiny", 10)
    x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3), minval=-1.0, maxval=1.0)
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    return model, variables, x


def test_tiny_forward_train_and_eval(tiny):
    model, variables, x = tiny
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10) and np.all(np.isfinite(np.asarray(logits)))
    # training mode moves the running statistics toward the batch statistics (momentum 0.9)
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
    feats = model.apply(variables, x, train=False, method="features")
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        feats @ head["kernel"] + head["bias"], model.apply(variables, x, train=False),
        rtol=1e-5, atol=1e-5,
    )


def test_bf16_compute_keeps_fp32_params():
    model = get_classifier("preact_resnet_tiny", 10, dtype=jnp.bfloat16)
    variables = abstract_variables(model, 16)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    x = jnp.zeros((2, 16, 16, 3))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert out.dtype == jnp.float32


def test_bad_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown classifier 'resnet19'"):
        get_classifier("resnet19", 10)
    with pytest.raises(ValueError, match="unknown stem"):
        abstract_variables(get_classifier("resnet18", 10, stem="tiny"), 32)


# ------------------------------------------------------------------------------------ losses

def _rand(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3


def test_cross_entropy_matches_optax_hard_and_soft():
    logits = _rand((6, 10))
    labels = np.arange(6) % 10
    onehot = jax.nn.one_hot(labels, 10)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, onehot),
        optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6, atol=1e-6,
    )
    soft = jax.nn.softmax(_rand((6, 10), 1))
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, soft), optax.softmax_cross_entropy(logits, soft),
        rtol=1e-6, atol=1e-6,
    )
    assert float(losses.classification_loss("ce", logits, soft)) == pytest.approx(
        float(jnp.mean(optax.softmax_cross_entropy(logits, soft))), rel=1e-6
    )


def test_bce_scaled_targets_closed_form_and_label_scaling():
    logits = _rand((5, 4), 2).astype(np.float64)
    labels = np.array([0, 1, 2, 3, 1])
    w = np.array([1.0, 0.5, 0.8, 0.0, 1.0])
    t = np.eye(4)[labels] * w[:, None]
    sig = 1.0 / (1.0 + np.exp(-logits))
    closed = -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).sum(-1)
    got = losses.sigmoid_binary_cross_entropy(
        jnp.asarray(logits, jnp.float32),
        losses.scaled_targets(jnp.asarray(labels), jnp.asarray(w), 4),
    )
    np.testing.assert_allclose(got, closed, rtol=1e-5)
    # the dispatcher scales one-hot targets by the per-example weight
    mean = losses.classification_loss(
        "bce", jnp.asarray(logits, jnp.float32), jax.nn.one_hot(labels, 4), jnp.asarray(w)
    )
    assert float(mean) == pytest.approx(closed.mean(), rel=1e-5)
    # label scaling: the gradient on the true-class logit is sigma(z_y) - w, zero at sigma = w
    g = jax.grad(
        lambda z: losses.sigmoid_binary_cross_entropy(z, losses.scaled_targets(
            jnp.asarray(labels), jnp.asarray(w, jnp.float32), 4)).sum()
    )(jnp.asarray(logits, jnp.float32))
    np.testing.assert_allclose(g, sig - t, rtol=1e-5, atol=1e-6)


def test_masked_loss_ignores_padding():
    logits, y = _rand((4, 3)), jax.nn.one_hot(jnp.array([0, 1, 2, 0]), 3)
    full = losses.classification_loss("ce", logits[:3], y[:3])
    masked = losses.classification_loss("ce", logits, y, mask=jnp.array([1, 1, 1, 0]))
    assert float(masked) == pytest.approx(float(full), rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss kind 'l2'"):
        losses.classification_loss("l2", logits, y)


def test_topk_matches_argsort():
    logits = _rand((50, 10), 3)
    logits[0] = 0.0  # all ties: only class 0 is "first"
    labels = np.random.default_rng(4).integers(0, 10, 50)
    order = np.argsort(-logits, axis=1, kind="stable")
    for k in (1, 5, 10):
        expected = np.array([labels[i] in order[i, :k] for i in range(50)], np.float32)
        np.testing.assert_array_equal(losses.topk_correct(logits, labels, k), expected)


# ------------------------------------------------------------------ learning rate, optimizer

def test_multistep_schedule_seed000():
    fn = learning_rate_fn(
        {"schedule": "multistep", "lr": 0.1, "milestones": (100, 200)}, steps_per_epoch=500,
        epochs=300,
    )
    cases = [(0, 0.1), (99.998, 0.1), (100, 0.01), (199, 0.01), (200, 0.001), (299, 0.001)]
    for epoch, lr in cases:
        assert float(fn(int(epoch * 500))) == pytest.approx(lr, rel=1e-6)


def test_cosine_schedule_with_warmup():
    spe, epochs = 10, 20
    fn = learning_rate_fn({"schedule": "cosine", "lr": 0.1, "warmup_epochs": 2}, spe, epochs)
    assert float(fn(0)) == pytest.approx(0.1 / 20)  # (s + 1) / W of the peak
    assert float(fn(19)) == pytest.approx(0.1)  # end of warm-up
    mid = 20 + (200 - 20) // 2
    assert float(fn(mid)) == pytest.approx(0.05, rel=1e-5)
    assert float(fn(200)) == pytest.approx(0.0, abs=1e-8)
    plain = learning_rate_fn({"schedule": "cosine", "lr": 0.1}, spe, epochs)
    s = np.arange(200)
    np.testing.assert_allclose(jax.vmap(plain)(s), 0.05 * (1 + np.cos(np.pi * s / 200)), rtol=1e-5,
                               atol=1e-7)
    with pytest.raises(ValueError, match="optim.schedule 'poly'"):
        learning_rate_fn({"schedule": "poly", "lr": 0.1}, spe, epochs)


def test_sgd_matches_torch_update_rule():
    """torch.optim.SGD: v <- mu v + (g + wd w); w <- w - lr v (coupled weight decay)."""
    lr, mu, wd = 0.1, 0.9, 1e-2
    tx = make_optimizer({"name": "sgd", "momentum": mu, "weight_decay": wd}, lambda s: lr)
    w = jnp.array([1.0, -2.0])
    state = tx.init(w)
    v = np.zeros(2)
    w_ref = np.array([1.0, -2.0])
    for g in ([0.5, 0.1], [-0.3, 0.2], [0.0, 1.0]):
        upd, state = tx.update(jnp.array(g), state, w)
        w = optax.apply_updates(w, upd)
        v = mu * v + (np.array(g) + wd * w_ref)
        w_ref = w_ref - lr * v
    np.testing.assert_allclose(w, w_ref, rtol=1e-6)
