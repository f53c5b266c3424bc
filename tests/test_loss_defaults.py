"""Each loss's defaults have one source: the class's ``__init__`` signature.

``build_loss(name)`` and ``LOSSES[name]()`` are used without Hydra (the library, the
benchmarks, the tests), so the signature is where a default is decided. ``conf/loss/<name>.yaml``
spells the same defaults out for the config and its overrides; these tests fail when one
changes without the other, or when a loss has no YAML (or a YAML no loss).
"""

from __future__ import annotations

import inspect

import pytest
from omegaconf import OmegaConf

from raycl.config import CONF_DIR
from raycl.losses import LOSSES, loss_parameters

LOSS_CONF = CONF_DIR / "loss"


def class_defaults(name: str) -> dict[str, object]:
    """A loss's own parameters with their signature defaults."""
    parameters = inspect.signature(LOSSES[name].__init__).parameters
    return {p: parameters[p].default for p in loss_parameters(LOSSES[name])}


def test_every_loss_has_a_yaml_and_every_yaml_a_loss() -> None:
    assert sorted(p.stem for p in LOSS_CONF.glob("*.yaml")) == sorted(LOSSES)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_yaml_defaults_equal_the_class_defaults(name: str) -> None:
    defaults = class_defaults(name)
    assert inspect.Parameter.empty not in defaults.values(), f"{name}: a parameter has no default"
    yaml = OmegaConf.to_container(OmegaConf.load(LOSS_CONF / f"{name}.yaml"))
    assert yaml.pop("name") == name
    assert yaml == defaults
    # 1 == 1.0 == True: also the types, so that a YAML `1` does not pass for a class's `1.0`
    assert {k: type(v) for k, v in yaml.items()} == {k: type(v) for k, v in defaults.items()}
