"""Pictures of an embedding space: a 2-D map coloured by label, and nearest neighbours.

:func:`plot_map` projects embeddings to 2-D with PCA (always) and with UMAP (``umap-learn``,
the ``umap`` extra, if installed) or t-SNE (scikit-learn) beside it, one colour per label.
:func:`plot_neighbours` shows a few query images each followed by its nearest neighbours by
cosine similarity, the label of each above it (images only: signals and tabular items have
no picture to show). Large sets are subsampled (seeded) for the non-linear map.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import numpy as np

MAX_NONLINEAR_POINTS = 5000


def project(embeddings: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """2-D coordinates of ``embeddings`` (N, D) by ``pca``, ``tsne`` or ``umap``."""
    x = np.asarray(embeddings, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, random_state=seed).fit_transform(x)
    raise ValueError(f"method must be one of ['pca', 'tsne', 'umap'], got {method!r}")


@cache
def nonlinear_method() -> str:
    """UMAP when ``umap-learn`` (the ``umap`` extra) is installed, else t-SNE, said once."""
    try:
        import umap  # noqa: F401
    except ImportError:
        print(
            "raycl: the embedding map uses t-SNE because umap-learn is not installed "
            "(pip install 'raycl[umap]' for UMAP)",
            file=sys.stderr,
        )
        return "tsne"
    return "umap"


def plot_map(
    embeddings: np.ndarray, labels: np.ndarray, path: str | Path, title: str, seed: int = 0
) -> Path:
    """PCA and UMAP/t-SNE maps of the embeddings side by side, coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = np.asarray(embeddings), np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(x))[:MAX_NONLINEAR_POINTS])
    method = nonlinear_method()
    panels = [
        ("PCA", project(x, "pca", seed), y),
        (method.upper() if method == "umap" else "t-SNE", project(x[keep], method, seed), y[keep]),
    ]
    classes = np.unique(y)
    colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    for ax, (name, coords, labs) in zip(axes, panels, strict=True):
        for i, c in enumerate(classes):
            at = labs == c
            ax.scatter(
                coords[at, 0], coords[at, 1], s=6, alpha=0.7, color=colours(i % 20), label=str(c)
            )
        ax.set_title(f"{name} ({len(coords):,} items)")
        ax.set_xlabel(f"{name} 1")
        ax.set_ylabel(f"{name} 2")
        ax.grid(alpha=0.2)
    if len(classes) <= 20:
        axes[1].legend(
            title="label", markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5)
        )
    return _save(fig, title, path)


def plot_neighbours(
    images: np.ndarray,
    embeddings: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    queries: int = 6,
    k: int = 6,
    seed: int = 0,
) -> Path:
    """For ``queries`` random items: the item, then its ``k`` nearest neighbours (cosine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(embeddings, dtype=np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
    chosen = np.random.default_rng(seed).choice(len(z), size=min(queries, len(z)), replace=False)
    fig, axes = plt.subplots(
        len(chosen), k + 1, figsize=(1.6 * (k + 1), 1.8 * len(chosen)), squeeze=False
    )
    for row, q in zip(axes, chosen, strict=True):
        similarity = z @ z[q]
        similarity[q] = -np.inf
        order = [q, *np.argsort(-similarity)[:k]]
        for col, (ax, item) in enumerate(zip(row, order, strict=True)):
            ax.imshow(_displayable(images[item]), cmap="gray")
            match = "" if col == 0 else ("✓" if labels[item] == labels[q] else "✗")
            ax.set_title(f"{'query' if col == 0 else f'#{col}'} {labels[item]} {match}", fontsize=8)
            ax.axis("off")
    return _save(fig, "nearest neighbours (cosine) of random items; label, ✓ when it matches", path)


def _save(fig, title: str, path: str | Path) -> Path:
    """Title, tighten, write the PNG (its folder made), close."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def is_image(item_shape: tuple[int, ...]) -> bool:
    """Whether items of this shape ``(C, H, W)`` can be shown as pictures."""
    return len(item_shape) == 3 and item_shape[0] in (1, 3) and min(item_shape[1:]) >= 4


def _displayable(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in any range -> (H, W[, 3]) in [0, 1]."""
    x = np.asarray(image, dtype=np.float64)
    x = (x - x.min()) / max(x.max() - x.min(), 1e-12)
    return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(embeddings (N, D), labels (N,), description)`` of a ``raycl embed`` Parquet file."""
    import json

    import pyarrow.parquet as pq

    from raycl.embed import EMBED_METADATA_KEY

    table = pq.read_table(path)
    column = table["embedding"].combine_chunks()
    embeddings = column.values.to_numpy().reshape(len(column), -1)
    description = json.loads((table.schema.metadata or {}).get(EMBED_METADATA_KEY, b"{}"))
    return embeddings, table["label"].to_numpy(), description


def plot_parquet(path: str | Path, directory: str | Path) -> list[Path]:
    """The map of a ``raycl embed`` file, and for images the nearest-neighbour grid, as PNGs
    in ``directory``: ``embedding-map.png``, ``neighbours.png``."""
    embeddings, labels, description = read_embeddings(path)
    out = Path(directory)
    title = f"{Path(path).name}: embeddings"
    if "checkpoint" in description:
        checkpoint = Path(description["checkpoint"])
        title = (
            f"{description['data']['name']} {description['split']} split, encoder "
            f"{checkpoint.parent.name}/{checkpoint.name}"
        )
    written = [plot_map(embeddings, labels, out / "embedding-map.png", title)]
    if "data" in description:
        from raycl.embed import EmbedRequest, open_split
        from raycl.schema import DataConfig

        split = open_split(
            EmbedRequest(**{**description, "data": DataConfig(**description["data"])})
        )
        first = np.asarray(split[0][0])
        if is_image(first.shape):
            images = _ImagesByIndex(split)
            written.append(plot_neighbours(images, embeddings, labels, out / "neighbours.png"))
    return written


class _ImagesByIndex:
    """``images[i]``: item ``i`` of a data set as an array, read only when asked for."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.dataset[int(index)][0])


def plot_run(run: str | Path, directory: str | Path) -> list[Path]:
    """Embed the test split of a run's best checkpoint in this process (kept as
    ``embeddings-test.parquet`` in ``directory``) and draw it (:func:`plot_parquet`)."""
    from raycl.embed import embed_to_parquet, plan_for

    plan = plan_for(run, overrides=["cluster.num_workers=0"])
    table = Path(directory) / "embeddings-test.parquet"
    embed_to_parquet(plan, table, overwrite=True)
    return [table, *plot_parquet(table, directory)]
