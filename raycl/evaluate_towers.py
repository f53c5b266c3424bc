"""Evaluation of a two-tower model (pure torch, no Ray): zero-shot classification, cross-modal
retrieval, and each modality's alignment and uniformity.

    zero_shot_top1      an image's class is the class whose prompts' mean text embedding is
                        nearest (CLIP's prompt ensembling; the prompts use held-out templates)
    recall_i2t@K        an image finds its caption among its K nearest texts (a text with the
                        same caption string counts: generated captions repeat)
    recall_t2i@K        a caption finds an image it describes among its K nearest images
    pair_alignment      mean ‖ẑ_image − ẑ_text‖² over the held-out pairs
    uniformity_image / uniformity_text   log mean exp(−2‖ẑ_i − ẑ_j‖²) within each modality

Every rank gets the same numbers: the zero-shot images are embedded by
:func:`raycl.evaluate.embed` (sharded over the ranks, gathered back), the held-out pairs and
prompts by every rank alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from raycl import metrics
from raycl.data.builder import CaptionEval
from raycl.evaluate import embed
from raycl.towers import TwoTowerModel

UNIFORMITY_POINTS = 2048  # pairwise metrics on at most this many items (O(N²) memory)


@torch.no_grad()
def evaluate_towers(
    model: nn.Module,
    captions: CaptionEval,
    test_images: Dataset,
    *,
    recall_ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 512,
    device: torch.device | None = None,
) -> dict[str, float]:
    """The metrics of the module docstring, plus the head's ``logit_scale`` (and
    ``logit_bias``): ``test_images`` are ``(image, label)`` items for zero-shot."""
    module: TwoTowerModel = getattr(model, "module", model)
    device = device or next(module.parameters()).device
    training = module.training
    module.eval()
    try:
        images, texts, caption_ids = _embed_pairs(module, captions.pairs, batch_size, device)
        _, test_z, test_y = embed(module, test_images, batch_size, device)
        test_z = F.normalize(test_z, dim=1)
        classes = torch.stack([_class_embedding(module, p, device) for p in captions.class_prompts])
    finally:
        module.train(training)
    scores = {
        "zero_shot_top1": 100.0 * float(((test_z @ classes.T).argmax(1) == test_y).float().mean())
    }
    scores.update(_recalls(images, texts, caption_ids, recall_ks))
    keep = torch.arange(len(images))[:UNIFORMITY_POINTS]
    scores["pair_alignment"] = metrics.alignment(images, texts)
    scores["uniformity_image"] = metrics.uniformity(images[keep])
    scores["uniformity_text"] = metrics.uniformity(texts[keep])
    return {**scores, **module.head.metrics()}


def _embed_pairs(
    module: TwoTowerModel, pairs: Dataset, batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised image and text embeddings of every held-out pair, and each caption's id
    (equal captions, equal ids)."""
    images, texts, ids, known = [], [], [], {}
    for (batch_images, batch_captions), _ in DataLoader(pairs, batch_size=batch_size):
        tokens = module.tokenize(batch_captions).to(device)
        embeddings = module((batch_images.to(device), tokens))[0].float().cpu()
        images.append(F.normalize(embeddings[:, 0], dim=1))
        texts.append(F.normalize(embeddings[:, 1], dim=1))
        ids += [known.setdefault(caption, len(known)) for caption in batch_captions]
    return torch.cat(images), torch.cat(texts), torch.tensor(ids)


def _class_embedding(module: TwoTowerModel, prompts: list[str], device: torch.device) -> Tensor:
    """The mean of the prompts' normalised text embeddings, normalised."""
    text = module.encode_text(module.tokenize(prompts).to(device)).float().cpu()
    return F.normalize(F.normalize(text, dim=1).mean(0), dim=0)


def _recalls(
    images: Tensor, texts: Tensor, caption_ids: Tensor, ks: Sequence[int]
) -> dict[str, float]:
    """Recall@K both ways; a hit is any retrieved item carrying the query's caption."""
    out = {}
    similarity = images @ texts.T
    for name, sims in (("i2t", similarity), ("t2i", similarity.T)):
        k_max = min(max(ks), sims.shape[1])
        nearest = caption_ids[sims.topk(k_max, dim=1).indices]
        hits = nearest == caption_ids[:, None]
        for k in ks:
            out[f"recall_{name}@{k}"] = 100.0 * float(hits[:, :k].any(1).float().mean())
    return out
