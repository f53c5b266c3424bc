"""Two-tower models, the generated pairs, their evaluation and the config's pairing rules."""

from __future__ import annotations

import copy

import pytest
import torch

from raycl.config import load_config
from raycl.data import build_datasets
from raycl.data.digit_pairs import (
    DIGIT_WORDS,
    HELD_OUT_TEMPLATES,
    PROMPT_TEMPLATES,
    TRAIN_TEMPLATES,
    DigitPairs,
    draw,
)
from raycl.errors import ConfigError
from raycl.evaluate_towers import _recalls, evaluate_towers
from raycl.losses import CLIPLoss, SigLIPLoss
from raycl.models import build_model
from raycl.schema import DataConfig, ModelConfig
from raycl.train import training_step

TINY = dict(
    proj_dim=16, vision_width=32, vision_layers=1, text_width=32, text_layers=1, context_length=16
)


def tiny_model(loss, image_tower: str = "vit", in_channels: int = 1):
    config = ModelConfig(name="two_tower", image_tower=image_tower, **TINY)
    return build_model(config, in_channels, loss.logit_head(), 8)


def pair_batch(model, n: int = 10, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    captions = [f"a {'bold' if i % 2 else 'thin'} digit number {i}" for i in range(n)]
    return torch.rand(n, 1, 8, 8, generator=g, dtype=dtype), model.tokenize(captions)


@pytest.mark.parametrize("loss", [CLIPLoss(), SigLIPLoss(weight=0.7)], ids=["clip", "siglip"])
def test_gradient_cached_towers_equal_one_pass(loss):
    """Both towers encoded in chunks of 3 (4 chunks), the loss on all embeddings, each chunk
    re-encoded with its slice of the gradient: the same step as one pass, scale and bias too."""
    torch.manual_seed(0)
    model = tiny_model(loss).double()
    chunked = copy.deepcopy(model)
    batch = pair_batch(model, dtype=torch.float64)
    for m, chunk_size in ((model, None), (chunked, 3)):
        optimizer = torch.optim.SGD(m.parameters(), lr=0.5)
        training_step(
            m, batch, None, loss, optimizer, device=torch.device("cpu"), chunk_size=chunk_size
        )
    changed = 0
    for (name, a), b in zip(model.named_parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)
        changed += int(a.grad is not None and bool(a.grad.abs().sum() > 0))
    assert changed == len(list(model.parameters()))  # every parameter, the head's included


@pytest.mark.parametrize("image_tower", ["small_cnn", "vit"])
def test_the_model_is_an_image_encoder_and_a_pair_encoder(image_tower):
    model = tiny_model(SigLIPLoss(), image_tower)
    images, tokens = pair_batch(model, 4)
    features, embeddings = model((images, tokens))
    assert features.shape == (4, 2, 16) and embeddings.shape == (4, 2, 17)  # + the bias coordinate
    image_features, image_embeddings = model(images)
    torch.testing.assert_close(image_embeddings, features[:, 0])
    assert image_features.shape[0] == 4
    assert tokens.shape == (4, 16) and tokens.dtype == torch.long


def test_pretrained_weights_load_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model(CLIPLoss())
    path = tmp_path / "towers.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    config = ModelConfig(name="two_tower", image_tower="vit", pretrained=str(path), **TINY)
    loaded = build_model(config, 1, CLIPLoss().logit_head(), 8)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_open_clip_checkpoints_load_into_the_towers(tmp_path):
    """An open_clip CLIP's weights, saved as a training checkpoint would (``state_dict``, DDP's
    ``module.`` prefixes): the towers then embed exactly as open_clip's model does."""
    from open_clip.model import CLIP, CLIPTextCfg

    from raycl.towers import text_config, vision_config

    config = ModelConfig(name="two_tower", image_tower="vit", **TINY)
    torch.manual_seed(3)
    reference = CLIP(16, vision_config(config, 8), CLIPTextCfg(**text_config(config))).eval()
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "state_dict": state}, path)
    config.pretrained = str(path)
    model = build_model(config, 3, SigLIPLoss().logit_head(), 8).eval()
    images, tokens = torch.rand(4, 3, 8, 8), model.tokenize(["a bold two", "a faint one"] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(images)[1], reference.encode_image(images))
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens))
    assert model.head.logit_scale.item() == reference.logit_scale.item()
    assert model.head.logit_bias.item() == -10.0  # a CLIP checkpoint has none: the loss's init
    config.proj_dim = 32
    with pytest.raises(ValueError, match=r"model.pretrained: .* does not fit this model") as err:
        build_model(config, 3, SigLIPLoss().logit_head(), 8)
    assert "\n" not in str(err.value)


def test_generated_attributes_change_the_image_and_the_caption():
    pairs = DigitPairs("train")
    (plain, caption), label = pairs[0]
    assert caption == TRAIN_TEMPLATES[0].format(
        digit=DIGIT_WORDS[label], stroke="thin", brightness="bright", position="centre"
    )
    variants = [pairs[i][0] for i in range(12)]
    assert len({v[0].numpy().tobytes() for v in variants}) == 12  # every combination differs
    assert len({v[1].split(",")[0] for v in variants}) > 1
    bold = draw(plain, "bold", "bright", "centre")
    assert bold.sum() > plain.sum() and torch.equal(bold.amax(), plain.amax())
    assert torch.equal(draw(plain, "thin", "faint", "centre"), plain * 0.45)
    assert torch.equal(draw(plain, "thin", "bright", "left")[..., :-1], plain[..., 1:])


def test_evaluation_uses_held_out_templates():
    bundle = build_datasets(DataConfig(name="digit_pairs"))
    test_captions = {bundle.captions.pairs[i][0][1] for i in range(24)}
    train_captions = {bundle.train_contrastive[i][0][1] for i in range(240)}
    assert not test_captions & train_captions
    assert set(HELD_OUT_TEMPLATES).isdisjoint(TRAIN_TEMPLATES)
    assert set(PROMPT_TEMPLATES).isdisjoint(TRAIN_TEMPLATES)
    assert len(bundle.captions.class_prompts) == 10
    assert len(bundle.train_contrastive) == 12 * len(bundle.train_eval)


def test_recall_counts_any_item_with_the_query_caption():
    images = torch.eye(4)
    texts = 0.9 * torch.eye(4)[[1, 0, 2, 3]] + 0.1 * torch.eye(4)  # pairs 0 and 1 swapped
    scores = _recalls(images, texts, torch.tensor([7, 7, 8, 9]), ks=(1,))
    assert scores == {"recall_i2t@1": 100.0, "recall_t2i@1": 100.0}
    scores = _recalls(images, texts, torch.tensor([6, 7, 8, 9]), ks=(1, 2))
    assert scores["recall_i2t@1"] == 50.0 and scores["recall_i2t@2"] == 100.0


def test_evaluation_reports_zero_shot_retrieval_and_the_head():
    bundle = build_datasets(DataConfig(name="digit_pairs"))
    small = bundle.captions._replace(
        pairs=torch.utils.data.Subset(bundle.captions.pairs, range(60))
    )
    scores = evaluate_towers(tiny_model(SigLIPLoss(), "small_cnn"), small, bundle.test_eval)
    assert 0.0 <= scores["zero_shot_top1"] <= 100.0
    assert scores["logit_scale"] == pytest.approx(10.0) and scores["logit_bias"] == -10.0
    expected = {"pair_alignment", "uniformity_image", "uniformity_text", "recall_t2i@10"}
    assert expected <= set(scores)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss=clip"], "model.name must be two_tower for loss clip"),
        (["model=two_tower", "data=digit_pairs"], "loss.name must be a paired loss"),
        (["model=two_tower", "loss=siglip"], "data.name must be image-caption pairs"),
        (["data=digit_pairs"], "model.name must be two_tower for the image-caption pairs"),
        (
            ["model=two_tower", "loss=clip", "data=digit_pairs", "data.supervised=true"],
            "data.supervised must be false for image-caption pairs",
        ),
        (
            ["model=two_tower", "loss=clip", "data=digit_pairs", "model.image_tower=vgg"],
            "model.image_tower must be one of",
        ),
        (
            ["model=two_tower", "loss=clip", "data=digit_pairs", "model.text_heads=3"],
            "model.text_heads: 64 channels do not split into heads of 3",
        ),
    ],
)
def test_pairing_mistakes_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(overrides)
    assert "\n" not in str(err.value)


def write_pair_folders(root, layout: str, n: int = 24) -> None:
    """root/train and root/test of coloured squares captioned with their colour."""
    from PIL import Image

    from raycl.data.paired_files import write_parquet_pairs, write_webdataset_shard

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    names = list(colours)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        labels = [i % 3 for i in range(n)]
        images = [Image.new("RGB", (20, 20), colours[names[y]]) for y in labels]
        captions = [f"a {names[y]} square" for y in labels]
        if layout == "parquet":
            write_parquet_pairs(root / split / "part-0.parquet", images, captions, labels)
        else:
            write_webdataset_shard(root / split / "shard-0.tar", images, captions, labels)


@pytest.mark.parametrize("layout", ["parquet", "webdataset"])
def test_paired_files_train_a_two_tower_model(tmp_path, layout):
    """data=pairs in both layouts: the bundle, then one short epoch in this process."""
    from raycl.session import LocalSession
    from raycl.train import run_training

    write_pair_folders(tmp_path, layout)
    overrides = [
        "model=two_tower", "loss=siglip", "data=pairs", f"data.root={tmp_path}",
        f"data.layout={layout}", "data.image_size=16", "data.batch_size_per_worker=8",
        "data.loader_workers=0", "data.class_names=[red,green,blue]", "epochs=1",
        "eval.linear_probe=false", "eval.knn_k=3", "model.proj_dim=16",
    ]  # fmt: skip
    if layout == "parquet":
        overrides.append("data.label_column=label")
    config = load_config(overrides)
    bundle = build_datasets(config.data)
    (image, caption), label = bundle.train_contrastive[4]
    assert image.shape == (3, 16, 16) and caption == "a green square" and label == 1
    assert bundle.captions.class_prompts[2][0] == "a photo of a blue."
    session = LocalSession()
    run_training(config, session)
    (report,) = session.reports
    assert report["steps"] == 3 and 0.0 <= report["zero_shot_top1"] <= 100.0
    assert {"recall_i2t@1", "logit_bias", "knn_top1"} <= set(report)
