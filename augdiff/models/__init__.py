"""Neural networks used across augdiff (classifiers; diffusion models live in ``edm``/``sd``)."""

from augdiff.models.classifiers import get_classifier, param_count

__all__ = ["get_classifier", "param_count"]
