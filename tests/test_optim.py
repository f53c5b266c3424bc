import io
import math
import pickle
from itertools import pairwise

import pytest
import torch
from torch import nn

from raycl.optim import (
    LARS,
    OPTIMIZERS,
    WarmupCosine,
    build_optimization,
    build_optimizer,
    restore_schedule,
    scaled_learning_rate,
    warmup_cosine,
)
from raycl.schema import OptimConfig


def _param(*values, shape=None) -> nn.Parameter:
    t = torch.tensor(values, dtype=torch.float64)
    return nn.Parameter(t.reshape(shape) if shape else t)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


# ----------------------------------------------------------------------------------- LARS


def test_lars_one_step_matches_hand_computation():
    w = _param(3.0, 4.0, shape=(1, 2))  # ‖w‖ = 5
    b = _param(1.0, 2.0)  # 1-D: excluded by default
    w.grad = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    b.grad = torch.tensor([0.5, -0.5], dtype=torch.float64)
    lr, m, wd, trust = 0.5, 0.9, 0.1, 0.01
    opt = LARS([w, b], lr=lr, momentum=m, weight_decay=wd, trust_coefficient=trust)
    opt.step()
    g = torch.tensor([[0.6, 0.8]]).double() + wd * torch.tensor([[3.0, 4.0]]).double()  # ‖g‖ 1.5
    eta = trust * 5.0 / (1.5 + 1e-8)
    v_w = eta * g
    want_w = torch.tensor([[3.0, 4.0]]).double() - lr * v_w
    want_b = torch.tensor([1.0, 2.0]).double() - lr * torch.tensor([0.5, -0.5]).double()
    torch.testing.assert_close(w.detach(), want_w)
    torch.testing.assert_close(b.detach(), want_b)  # plain SGD: no decay, no trust ratio

    # Second step with the same gradients: the momentum buffer carries m·v.
    opt.step()
    g2 = torch.tensor([[0.6, 0.8]]).double() + wd * want_w
    eta2 = trust * want_w.norm() / (g2.norm() + 1e-8)
    torch.testing.assert_close(w.detach(), want_w - lr * (m * v_w + eta2 * g2))
    v_b = torch.tensor([0.5, -0.5]).double()
    torch.testing.assert_close(b.detach(), want_b - lr * (m * v_b + v_b))


def test_lars_without_exclusion_adapts_biases_too():
    b = _param(3.0, 4.0)
    b.grad = torch.tensor([0.0, 2.0], dtype=torch.float64)  # ‖g‖ = 2
    LARS([b], lr=1.0, momentum=0.0, weight_decay=0.5, trust_coefficient=0.1,
         exclude_bias_and_norm=False).step()  # fmt: skip
    g = torch.tensor([1.5, 4.0]).double()
    torch.testing.assert_close(b.detach(), torch.tensor([3.0, 4.0]).double() - 0.5 / g.norm() * g)


def test_lars_group_flag_overrides_the_default():
    w = _param(3.0, 4.0, shape=(1, 2))
    b = _param(3.0, 4.0)
    w.grad = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    b.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    LARS(
        [{"params": [w], "lars_exclude": True}, {"params": [b], "lars_exclude": False}],
        lr=1.0, momentum=0.0, weight_decay=0.3, trust_coefficient=0.1,
    ).step()  # fmt: skip
    torch.testing.assert_close(w.detach(), torch.tensor([[2.0, 3.0]]).double())  # plain SGD
    g = torch.tensor([1.9, 2.2]).double()
    torch.testing.assert_close(b.detach(), torch.tensor([3.0, 4.0]).double() - 0.5 * g / g.norm())


def test_lars_zero_weights_or_gradient_use_local_lr_one():
    w = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    w.grad = torch.ones(2, 2, dtype=torch.float64)
    v = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    v.grad = torch.zeros(2, 2, dtype=torch.float64)
    LARS([w, v], lr=0.1, momentum=0.0, trust_coefficient=0.001).step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.1, dtype=torch.float64))
    torch.testing.assert_close(v.detach(), torch.ones(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("w_scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("g_scale", [1e-4, 1.0, 1e4])
def test_lars_relative_step_is_lr_times_trust(w_scale, g_scale):
    torch.manual_seed(0)
    w = nn.Parameter(w_scale * torch.randn(5, 3, dtype=torch.float64))
    w.grad = g_scale * torch.randn(5, 3, dtype=torch.float64)
    before = w.detach().clone()
    LARS([w], lr=0.7, momentum=0.9, trust_coefficient=0.02, eps=0.0).step()
    assert (w.detach() - before).norm() / before.norm() == pytest.approx(0.7 * 0.02, rel=1e-12)


def test_lars_trajectory_is_invariant_to_rescaling_the_weights():
    """For a scale-invariant loss L(c·w) = L(w), gradients scale as 1/c and LARS steps as c:
    the run from c·w0 is exactly c times the run from w0 (plain SGD's is not)."""
    target = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def run(scale: float, optimizer: type) -> torch.Tensor:
        w = nn.Parameter(scale * w0.clone())
        kwargs = {"trust_coefficient": 0.05, "eps": 0.0} if optimizer is LARS else {}
        opt = optimizer([w], lr=0.5, momentum=0.9, **kwargs)
        for _ in range(20):
            opt.zero_grad()
            (w / w.norm() - target / target.norm()).pow(2).sum().backward()
            opt.step()
        return w.detach()

    torch.testing.assert_close(run(100.0, LARS), 100.0 * run(1.0, LARS), rtol=1e-10, atol=0)
    sgd_small, sgd_large = run(1.0, torch.optim.SGD), run(100.0, torch.optim.SGD)
    assert not torch.allclose(sgd_large, 100.0 * sgd_small, rtol=1e-3)


def test_lars_converges_on_a_tiny_quadratic():
    torch.manual_seed(0)
    target_w = torch.randn(3, 6, dtype=torch.float64)
    target_b = torch.randn(3, dtype=torch.float64)
    model = nn.Linear(6, 3).double()
    opt = build_optimizer(model, "lars", lr=1.0, momentum=0.9, weight_decay=0.0,
                          trust_coefficient=0.02)  # fmt: skip
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=400)

    def loss() -> torch.Tensor:
        return (model.weight - target_w).pow(2).sum() + (model.bias - target_b).pow(2).sum()

    start = float(loss().detach())
    for _ in range(400):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
        sched.step()
    assert float(loss().detach()) < 1e-4 * start


def test_lars_state_dict_resumes_identically():
    model = _small_net()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))

    def step(m: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()

    opt = build_optimizer(model, "lars", lr=0.3, weight_decay=1e-4)
    for _ in range(3):
        step(model, opt)
    clone = _small_net()
    clone.load_state_dict(model.state_dict())
    opt_clone = build_optimizer(clone, "lars", lr=0.3, weight_decay=1e-4)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt_clone.load_state_dict(torch.load(buffer))
    for _ in range(2):
        step(model, opt)
        step(clone, opt_clone)
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"lr": -1.0}, {"lr": 0.1, "momentum": -0.1}, {"lr": 0.1, "weight_decay": -1.0},
     {"lr": 0.1, "trust_coefficient": 0.0}, {"lr": 0.1, "eps": -1.0}],
)  # fmt: skip
def test_lars_rejects_bad_hyper_parameters(kwargs):
    name = [k for k in kwargs if k != "lr"] or ["lr"]
    with pytest.raises(ValueError, match=name[-1]):
        LARS([nn.Parameter(torch.ones(2, 2))], **kwargs)


# ------------------------------------------------------------------------ scaling rules


@pytest.mark.parametrize(
    ("rule", "batch", "want"),
    [
        ("linear", 256, 0.3),
        ("linear", 4096, 0.3 * 16),
        ("linear", 64, 0.3 / 4),
        ("sqrt", 4096, 0.3 * 4),
        ("sqrt", 1024, 0.3 * 2),
        ("sqrt", 64, 0.3 / 2),
        ("none", 4096, 0.3),
    ],
)
def test_scaled_learning_rate(rule, batch, want):
    got = scaled_learning_rate(0.3, batch, rule)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-12)


def test_scaled_learning_rate_custom_base_batch():
    assert scaled_learning_rate(0.1, 1024, "linear", base_batch_size=512) == pytest.approx(0.2)
    assert scaled_learning_rate(0.1, 2048, "sqrt", base_batch_size=512) == pytest.approx(0.2)


def test_scaled_learning_rate_errors():
    with pytest.raises(ValueError, match=r"optim\.lr_scaling.*'linear', 'sqrt', 'none'.*'cube'"):
        scaled_learning_rate(0.1, 256, "cube")
    with pytest.raises(ValueError, match="global_batch_size"):
        scaled_learning_rate(0.1, 0)
    with pytest.raises(ValueError, match="base_batch_size"):
        scaled_learning_rate(0.1, 256, base_batch_size=0)


# ------------------------------------------------------------------------ build_optimizer


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_build_optimizer_parameter_groups(name):
    model = _small_net()
    model[0].bias.requires_grad_(False)  # frozen parameters are left out
    opt = build_optimizer(model, name, lr=0.2, weight_decay=0.05)
    expected = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "lars": LARS}[name]
    assert type(opt) is expected
    decay, no_decay = opt.param_groups
    assert [id(p) for p in decay["params"]] == [id(model[0].weight), id(model[3].weight)]
    assert [id(p) for p in no_decay["params"]] == [
        id(model[1].weight),  # BN scale
        id(model[1].bias),  # BN shift
        id(model[3].bias),
    ]
    assert decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 0.2
    if name == "lars":
        assert decay["lars_exclude"] is False
        assert no_decay["lars_exclude"] is True
    if name in ("sgd", "lars"):
        assert decay["momentum"] == 0.9
    if name == "adamw":
        assert decay["betas"] == (0.9, 0.999)


def test_build_optimizer_drops_empty_groups_and_passes_options():
    model = nn.Linear(3, 2, bias=False)
    opt = build_optimizer(model, "adamw", lr=1e-3, betas=(0.8, 0.9), weight_decay=0.1)
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)
    opt = build_optimizer(model, "lars", lr=1.0, momentum=0.5, trust_coefficient=0.02)
    assert opt.param_groups[0]["momentum"] == 0.5
    assert opt.param_groups[0]["trust_coefficient"] == 0.02


def test_build_optimizer_errors():
    with pytest.raises(ValueError, match=r"optim\.name.*'sgd', 'adamw', 'lars'.*'adam'"):
        build_optimizer(_small_net(), "adam", lr=0.1)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, "sgd", lr=0.1)


# -------------------------------------------------------------------------- warmup_cosine


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def _sgd(lr: float = 2.0) -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_cosine_values():
    lrs = _lrs(warmup_cosine(_sgd(2.0), warmup_steps=10, total_steps=110, final_lr_fraction=0.1),
               115)  # fmt: skip
    assert lrs[0] == pytest.approx(2.0 * 1 / 10)  # ~0 at the start
    assert lrs[4] == pytest.approx(2.0 * 5 / 10)  # linear warm-up
    assert lrs[9] == pytest.approx(2.0)  # warm-up end: the base lr ...
    assert lrs[10] == pytest.approx(2.0)  # ... and the start of the cosine
    assert lrs[60] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # half way down
    assert lrs[35] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lrs[110] == pytest.approx(0.2)  # final fraction at total_steps ...
    assert lrs[114] == pytest.approx(0.2)  # ... and after it
    assert all(a >= b for a, b in pairwise(lrs[10:]))  # monotone decay


def test_warmup_cosine_without_warmup_and_all_warmup():
    lrs = _lrs(warmup_cosine(_sgd(1.0), 0, 4), 5)
    assert lrs == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 - 0.5**0.5), 0]
    )
    lrs = _lrs(warmup_cosine(_sgd(1.0), 4, 4, final_lr_fraction=0.5), 6)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.5, 0.5])


def test_warmup_cosine_scales_every_group():
    opt = build_optimizer(_small_net(), "sgd", lr=0.4)
    sched = warmup_cosine(opt, 2, 10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.2])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.4, 0.4])


def test_warmup_cosine_state_dict_resumes_the_same_sequence():
    full = _lrs(warmup_cosine(_sgd(), 5, 30, 0.05), 30)
    first = warmup_cosine(_sgd(), 5, 30, 0.05)
    head = _lrs(first, 12)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    resumed_opt = _sgd()
    resumed = warmup_cosine(resumed_opt, 1, 2)  # different settings: the state restores them
    resumed.load_state_dict(state)
    resumed_opt.param_groups[0]["lr"] = resumed.get_last_lr()[0]  # as an optimizer load would
    assert head + _lrs(resumed, 18) == pytest.approx(full)


def test_warmup_cosine_pickles():
    sched = warmup_cosine(_sgd(), 3, 9)
    again = pickle.loads(pickle.dumps(sched))
    assert isinstance(again.lr_lambdas[0], WarmupCosine)
    assert again.lr_lambdas[0](4) == sched.lr_lambdas[0](4)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((5, 0), "total_steps"),
        ((-1, 10), "warmup_steps"),
        ((11, 10), "must not exceed"),
        ((2, 10, 1.5), "final_lr_fraction"),
        ((2.5, 10), "warmup_steps"),
    ],
)
def test_warmup_cosine_errors(args, match):
    with pytest.raises(ValueError, match=match):
        warmup_cosine(_sgd(), *args)


# ------------------------------------------------------------------- the optim section


def test_build_optimization_scales_the_lr_and_schedules_every_step():
    optimizer, schedule = build_optimization(
        _small_net(), OptimConfig(name="sgd", lr=0.1, warmup_epochs=1), 1024, 5, 3
    )
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.1 * 1024 / 256)
    assert schedule.get_last_lr()[0] == pytest.approx(0.4 / 5)  # first warm-up step of 5
    lars, _ = build_optimization(
        _small_net(), OptimConfig(name="lars", lr=1.2, lr_scaling="sqrt"), 4096, 2, 2
    )
    assert lars.param_groups[0]["initial_lr"] == pytest.approx(1.2 * 4)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"name": "adam"}, r"optim.name must be one of \['sgd', 'adamw', 'lars'\]"),
        ({"lr": 0.0}, "optim.lr must be > 0"),
        ({"lr_scaling": "cubic"}, "optim.lr_scaling must be one of"),
        ({"final_lr_fraction": 2.0}, r"optim.final_lr_fraction must be in \[0, 1\]"),
        ({"warmup_epochs": 9}, r"optim.warmup_epochs \(9\) must not exceed epochs \(3\)"),
    ],
)
def test_bad_optim_sections_are_one_line(settings, match):
    with pytest.raises(ValueError, match=match):
        build_optimization(_small_net(), OptimConfig(**settings), 256, 4, 3)


def _trained_schedule(total_steps: int, steps: int):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    scheduler = warmup_cosine(optimizer, 2, total_steps)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_a_restored_schedule_keeps_its_position_and_a_longer_plan_is_replanned():
    model, optimizer, scheduler = _trained_schedule(10, 10)
    assert optimizer.param_groups[0]["lr"] == 0.0  # the 10-step plan has ended
    saved_optimizer, saved_schedule = optimizer.state_dict(), scheduler.state_dict()

    def resumed(total_steps: int) -> float:
        again = torch.optim.SGD(model.parameters(), lr=0.3)
        schedule = warmup_cosine(again, 2, total_steps)
        again.load_state_dict(saved_optimizer)
        restore_schedule(schedule, saved_schedule)
        assert schedule.last_epoch == 10
        return again.param_groups[0]["lr"]

    assert resumed(10) == 0.0  # the same plan: exactly where it was
    fresh = _trained_schedule(20, 10)[1].param_groups[0]["lr"]
    assert resumed(20) == fresh > 0  # 20 steps: as if planned so from the start
