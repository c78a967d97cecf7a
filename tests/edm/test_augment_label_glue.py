"""The wire from EDM's augmentation pipe to the network's ``map_augment`` layer.

``train_step`` produces the pipe's 9-d labels and ``SongUNet`` embeds ``augment_labels``;
both are tested alone elsewhere. Here one training step runs through
:func:`augdiff.edm.model.make_net_apply` on a real (tiny) SongUNet with ``augment.p = 1``, and

- a flax method interceptor records the input of the ``map_augment`` Dense layer (via
  ``jax.debug.callback``, so it works inside ``value_and_grad``): it must be the labels
  ``train_step`` handed to ``net_apply`` (recorded by a wrapper), and not all zeros;
- the gradient of ``map_augment``'s kernel is ``augᵀ · ∂L/∂emb``: it is exactly zero when
  the labels do not arrive (zeros), so Adam leaves the kernel unchanged. After one step it
  must have moved. (Planting the drop in ``make_net_apply`` fails both checks.)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from augdiff.config import load_config
from augdiff.edm import model as edm_model
from augdiff.edm import train as edm_train
from augdiff.edm.core import EDMConfig


def _setup(repo_root):
    c = load_config(str(repo_root / "augdiff/configs/casd_cifar10.py:smoke"))
    c.mode = "dm"
    c.data.image_size = 8
    c.model.model_channels = 8
    c.model.channel_mult = (1,)  # one 8x8 level; attention at 4x4, which never occurs
    c.model.attn_resolutions = (4,)
    c.augment.p = 1.0  # every op fires: the labels are far from zero
    c.train.batch_size = 4
    net = edm_model.build_model(c, num_classes=2, precision="float32")
    assert net.augment_dim == 9
    opt = optax.adam(1e-2)
    state = jax.jit(lambda k: edm_model.init_state(k, net, opt, (4, 8, 8, 3)))(
        jax.random.PRNGKey(0))
    cfg = edm_train.StepConfig.from_config(c, num_classes=2)
    assert cfg.augment is not None
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (4, 8, 8, 3)), jnp.uint8),
             "source": jnp.zeros((4,), jnp.int32), "label": jnp.zeros((4,), jnp.int32)}
    return net, opt, state, cfg, batch


@pytest.mark.slow  # one SongUNet train step with the augment pipe: ~1 min to compile on 2 cores
def test_one_train_step_delivers_nonzero_augment_labels_to_map_augment(repo_root):
    net, opt, state, cfg, batch = _setup(repo_root)
    at_layer, handed = [], []

    def interceptor(next_fun, args, kwargs, context):
        if context.module.name == "map_augment" and context.method_name == "__call__":
            jax.debug.callback(lambda a: at_layer.append(np.asarray(a)), args[0])
        return next_fun(*args, **kwargs)

    apply = edm_model.make_net_apply(net)

    def net_apply(params, x, noise_labels, labels=None, **kw):
        jax.debug.callback(lambda a: handed.append(np.asarray(a)), labels["augment"])
        return apply(params, x, noise_labels, labels, **kw)

    before = np.asarray(state.params["map_augment"]["kernel"])
    step = jax.jit(lambda s, b, k: edm_train.train_step(
        s, b, k, net_apply=net_apply, optimizer=opt, edm_cfg=EDMConfig(), cfg=cfg))
    with nn.intercept_methods(interceptor):  # active while the step is traced
        new, metrics = step(state, batch, jax.random.PRNGKey(1))
        jax.effects_barrier()
    assert np.isfinite(float(metrics["loss"]))
    assert handed and at_layer
    assert handed[0].shape == (4, 9)
    assert np.abs(handed[0][:, 2:]).sum() > 0  # the pipe applied ops (p = 1)
    # what reaches map_augment is what the pipe produced, not zeros
    np.testing.assert_allclose(at_layer[0], handed[0], rtol=0, atol=1e-6)
    after = np.asarray(new.params["map_augment"]["kernel"])
    assert np.abs(after - before).max() > 1e-4  # a non-zero gradient reached the kernel
