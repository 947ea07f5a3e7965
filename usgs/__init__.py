"""usgs: Unsupervised Guidance for Semantic Segmentation (PyTorch Lightning + Hydra)."""

__version__ = "0.1.0"
