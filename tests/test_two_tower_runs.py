"""A two-tower run used as users use it: ``raycl.load_encoder``, ``raycl embed --tower image|text``
and ``raycl export``, each checked against the towers applied plainly to the same items.

The run is trained here in the driver process (``cluster.num_workers=0``); the same run on Ray
Train workers and a Tune search over the paired spaces are in tests/test_train.py and
tests/test_tune.py (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from safetensors.torch import load_file

import raycl
from raycl.config import load_config
from raycl.data import build_datasets
from raycl.data.digit_pairs import class_prompts
from raycl.embed import embed_to_parquet, plan_for
from raycl.errors import CheckpointError, ConfigError
from raycl.export import export_encoder
from raycl.runner import train
from tests.conftest import IN_PROCESS_RUN

TOWERS = [
    "model=two_tower", "loss=siglip", "data=digit_pairs", "model.proj_dim=16",
    "model.text_width=32", "model.text_layers=1", "model.context_length=16",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("runs")
    outcome = train(load_config([*IN_PROCESS_RUN, *TOWERS, f"storage_path={storage}", "name=t"]))
    assert 0 <= outcome.metrics["zero_shot_top1"] <= 100
    return Path(outcome.path)


def test_load_encoder_gives_both_towers(run):
    model, transform, info = raycl.load_encoder(run)
    assert info.config.model.name == "two_tower" and not model.training
    image = transform(build_datasets(info.config.data).test_eval.dataset.data[0])
    features, embeddings = model(image[None])
    assert (
        features.shape == (1, 32)
        and embeddings.shape == (1, 16)
        and model.embed_text(["a seven"]).shape == (1, 16)
    )
    assert model.head.metrics()["logit_bias"] != -10.0  # the learnt bias, not the initial one


@pytest.mark.parametrize("split", ["test", "train"])
def test_embed_text_tower_equals_the_tower_on_the_captions(run, tmp_path, split):
    plan = plan_for(run, overrides=["cluster.num_workers=0"], split=split, tower="text")
    out = tmp_path / "text.parquet"
    embed_to_parquet(plan, out)
    table = pq.read_table(out)
    bundle = build_datasets(load_config(TOWERS).data)
    pairs = bundle.captions.pairs if split == "test" else bundle.train_contrastive
    assert table.num_rows == len(pairs)
    rows = [0, 5, table.num_rows - 1]
    captions = table["caption"].to_pylist()
    assert [captions[i] for i in rows] == [pairs[i][0][1] for i in rows]
    model = raycl.load_encoder(run)[0]
    with torch.no_grad():
        expected = model.embed_text([captions[i] for i in rows]).numpy()
    got = np.stack(table["embedding"].to_numpy(zero_copy_only=False))[rows]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_embed_image_tower_with_the_joint_embedding(run, tmp_path):
    plan = plan_for(run, overrides=["cluster.num_workers=0"], tower="image", head=True)
    out = tmp_path / "image.parquet"
    embed_to_parquet(plan, out)
    table = pq.read_table(out)
    model, _, info = raycl.load_encoder(run)
    image = build_datasets(info.config.data).test_eval[3][0]
    with torch.no_grad():
        features, joint = model(image[None])
    np.testing.assert_allclose(table["projection"][3].as_py(), joint[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(table["embedding"][3].as_py(), features[0].numpy(), atol=1e-6)


def test_text_tower_needs_captions(run):
    with pytest.raises(ConfigError, match="--tower text: data set 'digits' has no captions"):
        plan_for(run, overrides=["cluster.num_workers=0", "data=digits"], tower="text")
    with pytest.raises(ConfigError, match="--tower must be one of"):
        plan_for(run, overrides=["cluster.num_workers=0"], tower="audio")


def test_export_writes_both_towers_the_tokenizer_and_the_prompts(run, tmp_path):
    out = export_encoder(run, tmp_path / "export")
    description = json.loads((out / "encoder.json").read_text())
    assert description["tokenizer"]["context_length"] == 16
    assert description["prompts"] == class_prompts()
    assert set(description["logits"]) == {"logit_scale", "logit_bias"}
    # the text tower loads into open_clip's own TextTransformer and embeds as the run's does
    text = _build_text_tower(16, CLIPTextCfg(**description["text_tower"]))
    text.load_state_dict(load_file(out / "text_tower.safetensors"))
    model = raycl.load_encoder(run)[0]
    tokens = model.tokenize(["a bold seven on the left"])
    with torch.no_grad():
        torch.testing.assert_close(text.eval()(tokens), model.encode_text(tokens))
    assert {p.name for p in out.iterdir()} == {
        "encoder.json", "image_tower.safetensors", "text_tower.safetensors", "head.safetensors",
    }  # fmt: skip
    with pytest.raises(CheckpointError, match="--torchscript: a two-tower model's tokenizer"):
        export_encoder(run, tmp_path / "ts", torchscript=True)
