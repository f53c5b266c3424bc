"""raycl: contrastive representation learning at very large batch on Ray."""

__version__ = "0.1.0"
