"""``digit_pairs``: image–caption pairs generated offline from the digits, for two-tower runs.

Every digit of scikit-learn's set (:mod:`raycl.data.digits`, same fixed split) is drawn in
each combination of three attributes that really change the image, and captioned with them:

    stroke      thin (as written) | bold (a 2×2 grey dilation)
    brightness  bright (as written) | faint (intensity × 0.45)
    position    centre | left | right (shifted one pixel, zero fill)

so a training pair is e.g. (a faint, bold 7 shifted left, "handwritten seven, bold, faint,
on the left"). Training captions use :data:`TRAIN_TEMPLATES`; the test pairs (retrieval) use
:data:`HELD_OUT_TEMPLATES` and the zero-shot prompts :data:`PROMPT_TEMPLATES`, none seen in
training. Generated on the fly, deterministic, no download.
"""

from __future__ import annotations

from itertools import product

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from raycl.data.builder import CaptionEval, DatasetBundle, DatasetSpec
from raycl.data.digits import DigitsDataset
from raycl.data.transforms import digits_eval_transform
from raycl.schema import DataConfig

__all__ = ["DIGIT_PAIRS", "DigitPairs", "class_prompts"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STROKES = ("thin", "bold")
BRIGHTNESS = ("bright", "faint")
POSITIONS = ("centre", "left", "right")
ATTRIBUTES = tuple(product(STROKES, BRIGHTNESS, POSITIONS))
TRAIN_TEMPLATES = (
    "a {brightness} {digit} in {stroke} strokes, {position}",
    "handwritten {digit}, {stroke}, {brightness}, on the {position}",
    "the digit {digit} drawn {stroke} and {brightness} at the {position}",
)
HELD_OUT_TEMPLATES = ("an image of a {stroke} {brightness} number {digit} placed {position}",)
PROMPT_TEMPLATES = ("a picture of the number {digit}", "the numeral {digit}", "a {digit}")


def draw(image: Tensor, stroke: str, brightness: str, position: str) -> Tensor:
    """A digit ``(1, 8, 8)`` in [0, 1] with the attributes applied."""
    if stroke == "bold":  # grey dilation: each pixel the max of its 2×2 neighbourhood
        image = F.max_pool2d(F.pad(image[None], (0, 1, 0, 1)), 2, stride=1)[0]
    if brightness == "faint":
        image = image * 0.45
    if position != "centre":
        shifted = torch.zeros_like(image)
        if position == "left":
            shifted[..., :-1] = image[..., 1:]
        else:
            shifted[..., 1:] = image[..., :-1]
        image = shifted
    return image


class DigitPairs(Dataset):
    """Every digit of ``split`` in every attribute combination: items
    ``((image (1, 8, 8), caption), label)``, captions from ``templates`` (item i uses
    template i mod len)."""

    def __init__(self, split: str, templates: tuple[str, ...] = TRAIN_TEMPLATES) -> None:
        self.digits = DigitsDataset(split, digits_eval_transform())
        self.templates = templates
        self.targets = [t for t in self.digits.targets for _ in ATTRIBUTES]

    def __len__(self) -> int:
        return len(self.digits) * len(ATTRIBUTES)

    def __getitem__(self, index: int) -> tuple[tuple[Tensor, str], int]:
        image, label = self.digits[index // len(ATTRIBUTES)]
        stroke, brightness, position = ATTRIBUTES[index % len(ATTRIBUTES)]
        template = self.templates[index % len(self.templates)]
        caption = template.format(
            digit=DIGIT_WORDS[label], stroke=stroke, brightness=brightness, position=position
        )
        return (draw(image, stroke, brightness, position), caption), label


def class_prompts() -> list[list[str]]:
    """The zero-shot prompts of each class (held-out templates; their mean text embedding
    is the class's)."""
    return [[t.format(digit=word) for t in PROMPT_TEMPLATES] for word in DIGIT_WORDS]


def build_digit_pairs(data: DataConfig, seed: int) -> DatasetBundle:
    """``digit_pairs``: training pairs, the digits as they are for kNN and zero-shot, and the
    held-out test pairs and prompts (``root`` unused)."""
    transform = digits_eval_transform()
    return DatasetBundle(
        DigitPairs("train"),
        DigitsDataset("train", transform),
        DigitsDataset("test", transform),
        num_classes=10,
        in_channels=1,
        captions=CaptionEval(DigitPairs("test", HELD_OUT_TEMPLATES), class_prompts()),
    )


DIGIT_PAIRS = DatasetSpec(
    build_digit_pairs,
    evaluation=digits_eval_transform,
    raw_item="an 8×8 digit with pixel values 0..16 (sklearn.datasets.load_digits().images[i])",
    paired=True,
)
