"""raycl: contrastive representation learning at very large batch on Ray.

``raycl.load_encoder(run_dir)`` returns a trained run's ``(encoder, transform, info)``
(:func:`raycl.encoder.load_encoder`, imported on first use so ``import raycl`` stays light);
everything else is reached through its module or the ``raycl`` command.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_encoder"]


def __getattr__(name: str) -> Any:
    if name == "load_encoder":
        from raycl.encoder import load_encoder

        return load_encoder
    raise AttributeError(f"module 'raycl' has no attribute {name!r}")
