"""Analyses of generated data: 2-D PCA of CLIP embeddings (seed 000 Fig. 3)."""

from augdiff.analysis.pca import PCAResult, embed_images, fit_pca, plot_embedding_pca, set_centroids

__all__ = ["PCAResult", "embed_images", "fit_pca", "plot_embedding_pca", "set_centroids"]
