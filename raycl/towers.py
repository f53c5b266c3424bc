"""Two-tower models (CLIP, SigLIP): an image tower and a text tower joined by the loss's head.

The image tower is one of raycl's encoders with a linear projection to the joint embedding
(``model.image_tower`` small_cnn, resnet18, resnet50), or open_clip's vision transformer
(``vit``) or modified ResNet (``modified_resnet``); the text tower is open_clip's text
transformer with open_clip's BPE tokenizer, whose vocabulary ships inside the package (nothing
is downloaded; weights start random unless ``model.pretrained`` names a state dict on disk).
``model.vision_*``, ``model.patch_size``, ``model.text_*`` and ``model.context_length`` size
open_clip's towers (:func:`vision_config`, :func:`text_config`); the defaults suit a CPU.

:class:`TwoTowerModel` takes a pair batch ``(images, tokens)`` and returns the towers'
embeddings ``(B, 2, D)`` and the logit embeddings ``(B, 2, D')`` of the
:class:`~raycl.losses.logits.LogitHead` — the pair as two views, which every loss engine, the
all-gather and gradient caching take as they are. Given images alone it is an image encoder
``(features, embeddings)``, so kNN, the linear probe and ``raycl embed`` work on its image side.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from raycl.losses.logits import LogitHead
from raycl.schema import ModelConfig

if TYPE_CHECKING:  # open_clip (with timm: 0.4 s) is imported where a two-tower model is built
    from open_clip.model import CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer

OPEN_CLIP_VISION = ("vit", "modified_resnet")
HEAD_WIDTH = 32  # channels per attention head of open_clip's vision towers


def vision_config(model: ModelConfig, image_size: int) -> CLIPVisionCfg:
    """open_clip's vision config for ``model.image_tower`` (vit or modified_resnet)."""
    from open_clip.model import CLIPVisionCfg

    layers = model.vision_layers
    return CLIPVisionCfg(
        layers=layers if model.image_tower == "vit" else (layers,) * 4,
        width=model.vision_width,
        head_width=HEAD_WIDTH,
        patch_size=model.patch_size,
        image_size=image_size,
    )


def text_config(model: ModelConfig) -> dict[str, Any]:
    """open_clip's text config (``CLIPTextCfg`` keys) of the ``model`` section."""
    return {
        "context_length": model.context_length,
        "width": model.text_width,
        "heads": model.text_heads,
        "layers": model.text_layers,
    }


class ProjectedEncoder(nn.Module):
    """A raycl encoder and a linear map to the joint embedding: ``x -> (features, embedding)``."""

    def __init__(self, encoder: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(encoder.out_dim, embed_dim, bias=False)
        self.out_dim: int = encoder.out_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.encoder(x)
        return features, self.proj(features)


class OpenCLIPVision(nn.Module):
    """open_clip's vision tower (already projected): its output is both features and embedding.
    It takes RGB; a grey image is given as three equal channels."""

    def __init__(self, tower: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.tower = tower
        self.out_dim = embed_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        embedding = self.tower(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
        return embedding, embedding


class TwoTowerModel(nn.Module):
    """Image tower + text tower + logit head (module docstring); ``tokenize`` turns captions
    into the text tower's input."""

    item_dims = 3

    def __init__(
        self, image: nn.Module, text: nn.Module, head: LogitHead, context_length: int
    ) -> None:
        super().__init__()
        self.image = image
        self.text = text
        self.head = head
        self.context_length = context_length
        self.out_dim: int = image.out_dim

    def forward(self, inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if isinstance(inputs, Tensor):
            return self.image(inputs)
        images, tokens = inputs
        image, text = self.image(images)[1], self.text(tokens)
        return torch.stack([image, text], 1), self.head(image, text)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """The text tower's embeddings ``(N, D)`` of token ids ``(N, context_length)``."""
        return self.text(tokens)

    def embed_text(self, texts: Sequence[str]) -> Tensor:
        """The text tower's embeddings ``(N, D)`` of strings (tokenised here)."""
        device = next(self.parameters()).device
        return self.encode_text(self.tokenize(texts).to(device))

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Token ids ``(N, context_length)`` of ``texts`` (open_clip's BPE; longer texts cut)."""
        return tokenizer(self.context_length)(list(texts))


@cache
def tokenizer(context_length: int) -> SimpleTokenizer:
    """open_clip's BPE tokenizer (its vocabulary ships in the package), built once a process."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def check_towers(model: ModelConfig) -> None:
    """One-line ``ValueError`` naming the ``model.*`` key of a bad two-tower section (the image
    tower's name is :func:`raycl.models.check_model`'s)."""
    sizes = ("vision_width", "vision_layers", "patch_size", "text_width", "text_layers")
    for key in (*sizes, "text_heads", "context_length"):
        if getattr(model, key) < 1:
            raise ValueError(f"model.{key} must be >= 1, got {getattr(model, key)!r}")
    for key, width, heads in (
        ("text_heads", model.text_width, model.text_heads),
        ("vision_width", model.vision_width, HEAD_WIDTH if model.image_tower == "vit" else 1),
    ):
        if width % heads:
            raise ValueError(f"model.{key}: {width} channels do not split into heads of {heads}")
    if model.pretrained is not None and not Path(model.pretrained).is_file():
        raise ValueError(f"model.pretrained: no file {model.pretrained!r}")


def build_two_tower(
    model: ModelConfig,
    in_channels: int,
    image_size: int,
    head: LogitHead,
    image_encoder: nn.Module | None = None,
) -> TwoTowerModel:
    """The two towers of the ``model`` section (``proj_dim`` is the joint embedding), joined by
    ``head`` (the loss's :meth:`~raycl.losses.paired.PairedLoss.logit_head`); the image tower
    is ``image_encoder`` (a raycl encoder) projected, or open_clip's when it is None."""
    from open_clip.model import CLIPTextCfg, _build_text_tower, _build_vision_tower

    check_towers(model)
    dim = model.proj_dim
    if image_encoder is None:
        if model.image_tower == "modified_resnet" and image_size % 32:
            raise ValueError(
                f"model.image_tower: modified_resnet needs images of a multiple of 32 "
                f"pixels (it downsamples 32×), the data has {image_size}"
            )
        if in_channels not in (1, 3):
            raise ValueError(
                f"model.image_tower: {model.image_tower} takes RGB or grey images, the data "
                f"has {in_channels} channels"
            )
        tower = _build_vision_tower(dim, vision_config(model, image_size))
        image: nn.Module = OpenCLIPVision(tower, dim)
    else:
        image = ProjectedEncoder(image_encoder, dim)
    text_cfg = CLIPTextCfg(**text_config(model))
    two_tower = TwoTowerModel(
        image, _build_text_tower(dim, text_cfg), head, text_cfg.context_length
    )
    if model.pretrained is not None:
        load_pretrained(two_tower, Path(model.pretrained))
    return two_tower


def load_pretrained(model: TwoTowerModel, path: Path) -> None:
    """Load a state dict from ``path`` into ``model``: raycl's own (``raycl export``'s files are
    the towers' parts) or open_clip's CLIP / CustomTextCLIP naming (``visual.*``, the text
    tower's keys at the top or under ``text.``, ``logit_scale``, ``logit_bias``), also inside a
    training checkpoint's ``state_dict`` and with DDP's ``module.`` prefixes. The head's
    scalars may be absent (they keep the loss's initial values); any other mismatch is a
    one-line ``ValueError``."""
    weights = read_state_dict(path)
    if any(key.startswith("visual.") for key in weights):
        weights = {_raycl_key(key): value for key, value in weights.items()}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shapes that differ: torch lists each on a line of its own
        mismatch = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ValueError(f"model.pretrained: {path} does not fit this model: {mismatch}") from None
    missing = [key for key in missing if not key.startswith("head.")]
    if missing or unexpected:
        problem = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}"
        raise ValueError(
            f"model.pretrained: {path} does not fit this model: it {problem} "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )


def _raycl_key(key: str) -> str:
    """An open_clip CLIP key as this model names it."""
    if key.startswith("visual."):
        return "image.tower." + key.removeprefix("visual.")
    if key in ("logit_scale", "logit_bias"):
        return "head." + key
    return key if key.startswith("text.") else "text." + key


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from safetensors or a plain tensor file (never unpickling code), unwrapped
    from a checkpoint's ``state_dict`` and DDP's ``module.`` prefixes."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = load_file(path)
    else:
        weights = torch.load(path, map_location="cpu", weights_only=True)
        weights = weights.get("state_dict", weights)
    return {key.removeprefix("module."): value for key, value in weights.items()}
