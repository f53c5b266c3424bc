"""Encoders, projection heads and the contrastive model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raycl.models import ContrastiveModel, ProjectionHead, SmallCNN, build_model, resnet
from raycl.schema import ModelConfig


def test_small_cnn_shapes() -> None:
    encoder = SmallCNN(in_channels=1, width=8)
    assert encoder.out_dim == 32
    assert encoder(torch.randn(5, 1, 8, 8)).shape == (5, 32)
    assert SmallCNN(in_channels=3, width=4)(torch.randn(2, 3, 32, 32)).shape == (2, 16)


def _layer1_size(net: nn.Module, size: int) -> tuple[int, int]:
    """Spatial size of ``layer1``'s output for a ``size`` x ``size`` input."""
    shapes = []
    handle = net.layer1.register_forward_hook(lambda m, i, out: shapes.append(out.shape[-2:]))
    net(torch.randn(2, net.conv1.in_channels, size, size))
    handle.remove()
    return tuple(shapes[0])


def test_resnet_cifar_stem_keeps_resolution() -> None:
    cifar = resnet("resnet18", cifar_stem=True, in_channels=3)
    imagenet = resnet("resnet18", cifar_stem=False, in_channels=3)
    assert cifar.out_dim == imagenet.out_dim == 512
    assert isinstance(cifar.maxpool, nn.Identity) and isinstance(cifar.fc, nn.Identity)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert _layer1_size(cifar, 32) == (32, 32)
    assert _layer1_size(imagenet, 32) == (8, 8)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("cifar_stem", [True, False])
def test_resnet_in_channels(cifar_stem: bool) -> None:
    net = resnet("resnet18", cifar_stem=cifar_stem, in_channels=1)
    assert net.conv1.in_channels == 1
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 512)


def test_resnet50_out_dim_and_unknown_name() -> None:
    assert resnet("resnet50").out_dim == 2048
    with pytest.raises(ValueError, match="resnet name must be one of"):
        resnet("resnet34")


@pytest.mark.parametrize(("num_layers", "linears"), [(1, 1), (2, 2), (3, 3)])
def test_projection_head_layers(num_layers: int, linears: int) -> None:
    head = ProjectionHead(16, 32, 8, num_layers=num_layers)
    assert sum(isinstance(m, nn.Linear) for m in head) == linears
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head) == num_layers - 1
    assert head(torch.randn(4, 16)).shape == (4, 8) and head.out_dim == 8
    plain = ProjectionHead(16, 32, 8, num_layers=num_layers, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain)
    assert all(m.bias is not None for m in plain if isinstance(m, nn.Linear))


def test_projection_head_rejects_zero_layers() -> None:
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        ProjectionHead(16, 32, 8, num_layers=0)


def test_contrastive_model_outputs_and_gradients() -> None:
    model = ContrastiveModel(SmallCNN(1, width=4), ProjectionHead(16, 16, 6))
    assert (model.out_dim, model.embed_dim) == (16, 6)
    features, embeddings = model(torch.randn(5, 1, 8, 8))
    assert features.shape == (5, 16) and embeddings.shape == (5, 6)
    assert not torch.allclose(embeddings.norm(dim=1), torch.ones(5))  # not normalised

    features, embeddings = model(torch.randn(4, 2, 1, 8, 8))  # (B, V, C, H, W)
    assert features.shape == (4, 2, 16) and embeddings.shape == (4, 2, 6)
    embeddings.square().sum().backward()
    first_conv = model.encoder.net[0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.head.parameters())


def test_multiview_forward_matches_flat_forward() -> None:
    model = ContrastiveModel(SmallCNN(1, width=4), ProjectionHead(16, 16, 6)).eval()
    views = torch.randn(3, 2, 1, 8, 8)
    _, stacked = model(views)
    _, flat = model(views.flatten(0, 1))
    torch.testing.assert_close(stacked, flat.view(3, 2, 6))


def test_build_model() -> None:
    model = build_model(ModelConfig(name="small_cnn", width=8, proj_dim=4), in_channels=1)
    assert model.out_dim == 32 and model.embed_dim == 4
    assert model.head[0].out_features == 32  # hidden width defaults to out_dim
    model = build_model(
        ModelConfig(name="resnet18", cifar_stem=True, proj_hidden_dim=64, proj_layers=3), 3
    )
    assert model.encoder.conv1.stride == (1, 1)
    assert model(torch.randn(2, 3, 32, 32))[1].shape == (2, 128)
    with pytest.raises(ValueError, match=r"model\.name must be one of \['small_cnn', .*got 'vit'"):
        build_model(ModelConfig(name="vit"), 3)


def test_conv1d_encodes_signals_and_multiview_batches() -> None:
    model = build_model(ModelConfig(name="conv1d", width=8, proj_dim=16), in_channels=1)
    assert model.item_dims == 2 and model.out_dim == 40
    views = torch.randn(6, 2, 1, 40)
    features, embeddings = model(views)
    assert features.shape == (6, 2, 40) and embeddings.shape == (6, 2, 16)
    model.eval()
    flat_features, _ = model(views.flatten(0, 1))
    assert torch.allclose(flat_features, model(views)[0].flatten(0, 1), atol=1e-6)
    assert model(torch.randn(3, 1, 64))[0].shape == (3, 40)  # any length: 5 positions pooled
