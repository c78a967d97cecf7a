"""Forward parity of the Flax classifiers with independent PyTorch networks written here.

PreActResNet18 (He et al. 2016b, Fig. 4e; the CIFAR variant of kuangliu/pytorch-cifar: 3x3
stem, no final BN-ReLU) and ResNet50 (He et al. 2016a, Table 1; bottleneck with the stride on
the 3x3 conv, torchvision's "v1.5"; CIFAR stem conv3x3-BN-ReLU, no max-pool) are rewritten in
PyTorch from their definitions, loaded with the SAME weights (random BN affine parameters and
running statistics, so no BN is an identity) and compared logit for logit, with BatchNorm in
eval mode (running statistics) and in train mode (batch statistics; the running means are
updated identically). A network with a residual connection removed, a shortcut on the wrong
tensor or the stride on the wrong conv gives other logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.models.classifiers import get_classifier

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.torch

EPS, MOMENTUM = 1e-5, 0.1  # torch's BN defaults (flax momentum 0.9 = 1 - 0.1)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=EPS, momentum=MOMENTUM)


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class TorchPreActBlock(nn.Module):
    """x + conv2(relu(bn2(conv1(relu(bn1(x)))))); projection of relu(bn1(x)) on a shape change."""

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = _bn(cin), _conv(cin, planes, 3, stride)
        self.bn2, self.conv2 = _bn(planes), _conv(planes, planes, 3)
        self.down_conv = _conv(cin, planes, 1, stride) if stride != 1 or cin != planes else None

    def forward(self, x):
        a = F.relu(self.bn1(x))
        shortcut = self.down_conv(a) if self.down_conv is not None else x
        y = self.conv1(a)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + shortcut


class TorchBottleneck(nn.Module):
    """relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + shortcut(x)), stride on conv2."""

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        out = 4 * planes
        self.conv1, self.bn1 = _conv(cin, planes, 1), _bn(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), _bn(planes)
        self.conv3, self.bn3 = _conv(planes, out, 1), _bn(out)
        self.down_conv = self.down_bn = None
        if stride != 1 or cin != out:
            self.down_conv, self.down_bn = _conv(cin, out, 1, stride), _bn(out)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.down_conv is None else self.down_bn(self.down_conv(x))
        return F.relu(y + shortcut)


class TorchResNet(nn.Module):
    def __init__(self, block: str, stages: tuple[int, ...], width: int, num_classes: int):
        super().__init__()
        self.stem_conv = _conv(3, width, 3)
        self.stem_bn = _bn(width) if block == "bottleneck" else None
        cls, expansion = (TorchBottleneck, 4) if block == "bottleneck" else (TorchPreActBlock, 1)
        self.names, blocks, cin = [], [], width
        for i, n in enumerate(stages):
            for j in range(n):
                planes = width * 2**i
                blocks.append(cls(cin, planes, 2 if (i > 0 and j == 0) else 1))
                self.names.append(f"stage{i + 1}_block{j + 1}")
                cin = planes * expansion
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem_conv(x)
        if self.stem_bn is not None:
            x = F.relu(self.stem_bn(x))
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean(dim=(2, 3)))


def _randomise(variables, key):
    """Random BN scale/bias/mean/var (var > 0) and weights, so BN is never an identity."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    out = []
    for i, (path, x) in enumerate(leaves):
        name = jax.tree_util.keystr(path)
        k = jax.random.fold_in(key, i)
        if "'var'" in name:
            out.append(jax.random.uniform(k, x.shape, minval=0.5, maxval=2.0))
        elif "'mean'" in name or "'bias'" in name:
            out.append(0.3 * jax.random.normal(k, x.shape))
        elif "'scale'" in name:
            out.append(jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5))
        else:
            out.append(x)  # conv/dense kernels: the library's (Kaiming) initialisation
    return jax.tree_util.tree_unflatten(tree, out)


def _load(tnet: TorchResNet, params, stats) -> None:
    def conv(m, p):
        m.weight.copy_(torch.tensor(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()))

    def bn(m, p, s):
        m.weight.copy_(torch.tensor(np.asarray(p["scale"])))
        m.bias.copy_(torch.tensor(np.asarray(p["bias"])))
        m.running_mean.copy_(torch.tensor(np.asarray(s["mean"])))
        m.running_var.copy_(torch.tensor(np.asarray(s["var"])))

    with torch.no_grad():
        conv(tnet.stem_conv, params["stem_conv"])
        if tnet.stem_bn is not None:
            bn(tnet.stem_bn, params["stem_bn"], stats["stem_bn"])
        for name, blk in zip(tnet.names, tnet.blocks, strict=True):
            for child_name, child in blk.named_children():
                if isinstance(child, nn.Conv2d):
                    conv(child, params[name][child_name])
                elif isinstance(child, nn.BatchNorm2d):
                    bn(child, params[name][child_name], stats[name][child_name])
        tnet.head.weight.copy_(torch.tensor(np.asarray(params["head"]["kernel"]).T.copy()))
        tnet.head.bias.copy_(torch.tensor(np.asarray(params["head"]["bias"])))


CASES = {
    "preact_resnet18": ("preact", (2, 2, 2, 2), 8),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_parity_with_torch_rewrite(name):
    block, stages, width = CASES[name]
    model = get_classifier(name, 10, width=width)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, 16, 16, 3))))
    variables = _randomise(init(jax.random.key(0)), jax.random.key(1))
    tnet = TorchResNet(block, stages, width, 10)
    assert sum(p.numel() for p in tnet.parameters()) == sum(
        int(v.size) for v in jax.tree_util.tree_leaves(variables["params"]))
    _load(tnet, variables["params"], variables["batch_stats"])
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    # eval mode: running statistics
    tnet.eval()
    with torch.no_grad():
        ref = tnet(xt).numpy()
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    got = np.asarray(apply(variables, jnp.asarray(x), train=False))
    assert float(np.std(ref)) > 0.1  # logits that carry signal
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))

    # train mode: batch statistics, running means updated with momentum 0.1
    tnet.train()
    with torch.no_grad():
        ref_t = tnet(xt).numpy()
    got_t, upd = apply(variables, jnp.asarray(x), train=True, mutable=("batch_stats",))
    np.testing.assert_allclose(np.asarray(got_t), ref_t, rtol=1e-4,
                               atol=1e-4 * float(np.abs(ref_t).max()))
    assert float(np.max(np.abs(ref_t - ref))) > 1e-3  # the two BN modes differ here
    first = tnet.names[0]
    bn1 = tnet.blocks[0].bn1
    np.testing.assert_allclose(np.asarray(upd["batch_stats"][first]["bn1"]["mean"]),
                               bn1.running_mean.numpy(), rtol=1e-5, atol=1e-6)
