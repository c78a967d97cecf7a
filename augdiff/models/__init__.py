"""Networks: the classifiers (PreActResNet18, ResNet18/50, ResNeXt50) and the DDPM++ SongUNet
of EDM (with CASD source conditioning). Stable Diffusion's networks are diffusers' Flax
classes, loaded by :mod:`augdiff.sd.loading`."""

from augdiff.models.classifiers import get_classifier, param_count
from augdiff.models.songunet import SongUNet, songunet_config

__all__ = ["SongUNet", "get_classifier", "param_count", "songunet_config"]
