"""What a trial trains: the training config of a ``tune`` config and of one trial.

A trial's Tune config is ``{dotted key: value}`` of the searched settings plus
:data:`SEARCH_MARKER`; :func:`trial_config` applies it to the search's base training config
(:func:`training_config`). Kept apart from :mod:`raycl.search.tuner` so that what sits
beside the search (tracking, benchmarks) can name a trial's config without the experiment.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raycl.config import with_overrides
from raycl.schema import TrainConfig, TuneRunConfig

# A constant config entry every trial carries (the method's name): Tune hands a searcher its
# metric and mode only with a non-empty param_space. Not a training setting.
SEARCH_MARKER = "raycl_search"


def training_config(cfg: TuneRunConfig) -> TrainConfig:
    """The training part of a ``tune`` config (what every trial starts from)."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})


def trial_config(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The training config of one trial: ``base`` with the trial's dotted-key settings."""
    return with_overrides(base, {k: v for k, v in overrides.items() if k != SEARCH_MARKER})
