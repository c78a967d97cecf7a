"""The real-size model builders of ``benchmarks/zoo.py`` give the published architectures.

Parameter counts come from ``jax.eval_shape`` (nothing is allocated) and are compared with
(a) the counts published for SD-1.5's UNet / VAE / CLIP ViT-L/14 text encoder and the CIFAR
ResNets, and (b) the PyTorch twins (diffusers / transformers, built on torch's ``meta`` device)
of the same configurations, tensor by tensor in number.
"""

import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

import zoo  # noqa: E402

# Published counts: diffusers' SD-1.5 UNet 859,520,964; AutoencoderKL 83,653,863; CLIP
# ViT-L/14 text tower 123,060,480; kuangliu/pytorch-cifar PreActResNet18 11,171,146 and
# ResNet50 23,520,842 (10 classes).
PUBLISHED = {"sd15-unet": 859_520_964, "sd15-vae": 83_653_863, "sd15-text": 123_060_480,
             "preact_resnet18": 11_171_146, "resnet50": 23_520_842}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    assert zoo.build(name).param_count == PUBLISHED[name]


@pytest.mark.parametrize("name", ["sd21-unclip-unet", "ip2p-unet", "sd15-vae", "sd15-text"])
def test_counts_equal_the_pytorch_twin(name):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    with torch.device("meta"):
        peer = zoo.torch_peer(name)
    want = sum(p.numel() for p in peer.parameters())
    built = zoo.build(name)
    assert built.param_count == want
    # Same multiset of tensor sizes (layouts differ: OIHW vs HWIO).
    got_sizes = sorted(math.prod(x.shape) for x in __import__("jax").tree_util.tree_leaves(
        built.abstract))
    assert got_sizes == sorted(p.numel() for p in peer.parameters())


def test_unclip_and_ip2p_configs():
    unclip = zoo.build("sd21-unclip-unet")
    assert unclip.abstract["class_embedding"]["linear_1"]["kernel"].shape == (2048, 1280)
    assert unclip.module.cross_attention_dim == 1024
    ip2p = zoo.build("ip2p-unet")
    assert ip2p.abstract["conv_in"]["kernel"].shape == (3, 3, 8, 320)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown model"):
        zoo.build("sd99-unet")
