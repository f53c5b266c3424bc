"""The configuration: the YAML groups composed against the schema, checked, overridden.

``raycl/conf/`` holds the YAML groups (``loss/``, ``data/``, ``model/``, ``optim/``,
``cluster/``, ``search/``, ``space/``), shipped inside the package; ``config_dirs`` add a
user's own groups (Hydra's search path). Composed against :mod:`raycl.schema` (Hydra
structured configs), an unknown key or a wrong type is a one-line error naming the key; the
result is a *typed* config (:class:`~raycl.schema.TrainConfig`,
:class:`~raycl.schema.TuneRunConfig`): what crosses the Ray boundary and what the builders
take. Each section's values are checked by the registry that builds it
(:func:`raycl.data.check_data`, :func:`raycl.models.check_model`,
:func:`raycl.losses.build_loss`, :func:`raycl.optim.check_optim`); the sections without a
builder (run, cluster, eval, train) are checked here. A search trial's config is the training
part of the ``tune`` config (:func:`training_config`) with the trial's settings
(:func:`trial_config`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from raycl.errors import ConfigError, redact
from raycl.schema import PLACEMENT_STRATEGIES, TrainConfig, TuneRunConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("loss", "data", "model", "optim", "cluster", "tracking", "search", "space")
# A constant config entry every trial carries (the method's name): Tune hands a searcher its
# metric and mode only with a non-empty param_space. Not a training setting.
SEARCH_MARKER = "raycl_search"


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="tune_schema", node=TuneRunConfig)


def compose(
    overrides: list[str] | None = None,
    config_name: str = "train",
    config_dirs: list[str | Path] | None = None,
):
    """Compose ``conf/<config_name>.yaml`` with Hydra ``overrides`` (a ``DictConfig``);
    ``config_dirs`` are searched for extra group options (``loss/my_loss.yaml``, ...)."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_schema()
    extra = [Path(d).expanduser().resolve() for d in config_dirs or []]
    missing = [str(d) for d in extra if not d.is_dir()]
    if missing:
        raise ConfigError(f"--config-dir: not a directory: {', '.join(missing)}")
    search_path = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in extra)}]"] if extra else []
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(
                config_name=config_name, overrides=[*search_path, *list(overrides or [])]
            )
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_composition_error(err, config_dirs)) from None
    except yaml.MarkedYAMLError as err:  # a config file that is not YAML
        mark = err.problem_mark or err.context_mark
        where = f"{mark.name}, line {mark.line + 1}" if mark else "a config file"
        raise ConfigError(f"{where}: not valid YAML: {err.problem or err.context}") from None


def _composition_error(err: BaseException, config_dirs: list[str | Path] | None) -> str:
    """Hydra's error in one line; an unknown ``group=option`` lists the group's options."""
    unknown = re.search(r"Could not find '(\w+)/([^']*)'", str(err))
    if unknown and unknown.group(1) in GROUPS:
        group, option = unknown.groups()
        choices = ", ".join(group_options(config_dirs)[group])
        return f"{group}={option}: no such option; choose one of {choices}"
    cause = f": {_one_line(err.__cause__)}" if err.__cause__ else ""
    return _one_line(err).rstrip(".") + cause


def load_config(
    overrides: list[str] | None = None,
    config_name: str = "train",
    config_dirs: list[str | Path] | None = None,
) -> TrainConfig:
    """The validated, typed config: ``conf/<config_name>.yaml`` with ``overrides``."""
    from omegaconf import OmegaConf

    composed = compose(overrides, config_name, config_dirs)
    with _one_line_errors():
        cfg = OmegaConf.to_object(composed)
    validate(cfg)
    return cfg


def with_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A validated copy of ``cfg`` with ``{dotted key: value}`` set (a trial's settings)."""
    from omegaconf import OmegaConf

    with _one_line_errors():
        node = OmegaConf.structured(cfg)
        for key, value in overrides.items():
            OmegaConf.update(node, key, value, merge=False)
        updated = OmegaConf.to_object(node)
    validate(updated)
    return updated


def training_config(cfg: TuneRunConfig) -> TrainConfig:
    """The training part of a ``tune`` config (what every trial starts from)."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})


def trial_config(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The training config of one trial: ``base`` with the trial's dotted-key settings (a
    trial's Tune config: the searched settings and :data:`SEARCH_MARKER`)."""
    return with_overrides(base, {k: v for k, v in overrides.items() if k != SEARCH_MARKER})


def storage_path(cfg: TrainConfig) -> str:
    """``cfg.storage_path`` made absolute (URIs such as ``s3://`` are kept)."""
    path = cfg.storage_path
    return path if "://" in path else str(Path(path).expanduser().resolve())


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["data.root=/x", "seed=3"]`` as ``{dotted key: value}`` (values read as YAML), for
    :func:`with_overrides`."""
    import yaml

    parsed = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not key=value (e.g. data.root=/data)")
        parsed[key] = yaml.safe_load(value)
    return parsed


def has_key(cfg: Any, dotted: str) -> bool:
    """Whether ``cfg`` (a typed config) has the dotted key, e.g. ``"loss.temperature"``."""
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}:
            node = getattr(node, part)
        else:
            return False
    return True


def flat_config(cfg: Any, scalars: bool = True) -> dict[str, Any]:
    """A config, typed (dataclasses) or plain (nested dicts, e.g. loaded YAML), as
    ``{dotted key: value}``: ``loss.temperature``, ``data.batch_size_per_worker``, ... With
    ``scalars`` every value is a ``bool``/``int``/``float``/``str``, ``None`` as ``"null"`` and
    lists as JSON text (what TensorBoard hparams and MLflow params hold); else values as they are.
    """
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if dataclasses.is_dataclass(node):
            node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}{key}.", value)
        elif scalars and node is None:
            flat[prefix[:-1]] = "null"
        elif scalars and isinstance(node, list | tuple):
            flat[prefix[:-1]] = json.dumps(list(node))
        else:
            flat[prefix[:-1]] = node

    visit("", cfg)
    return flat


def redacted(cfg: Any) -> Any:
    """A copy of a config (typed or plain) with the credentials in its text values replaced by
    ``***`` (:func:`raycl.errors.redact`: ``tracking.uri=https://user:***@host``): what is
    recorded, printed and logged. The run itself keeps the real values."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        fields = dataclasses.fields(cfg)
        return dataclasses.replace(
            cfg, **{f.name: redacted(getattr(cfg, f.name)) for f in fields if f.init}
        )
    if isinstance(cfg, dict):
        return {key: redacted(value) for key, value in cfg.items()}
    if isinstance(cfg, list | tuple):
        return type(cfg)(redacted(value) for value in cfg)
    return redact(cfg) if isinstance(cfg, str) else cfg


def to_yaml(cfg: TrainConfig) -> str:
    """The config as YAML, credentials redacted (``raycl train --cfg``, the run's record)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(redacted(cfg)))


def group_options(config_dirs: list[str | Path] | None = None) -> dict[str, list[str]]:
    """Every config group and its options (the YAML files of ``conf/`` and ``config_dirs``)."""
    roots = [CONF_DIR, *(Path(d).expanduser() for d in config_dirs or [])]
    return {
        group: sorted({p.stem for root in roots for p in (root / group).glob("*.yaml")})
        for group in GROUPS
    }


def validate(cfg: TrainConfig) -> None:
    """Every section's checks: the registries' for data, model, loss and optimiser, and
    this module's for the sections that have no builder."""
    from raycl.data import check_data
    from raycl.losses import build_loss
    from raycl.models import check_model
    from raycl.optim import check_optim

    if "name" not in cfg.loss:
        raise ConfigError("loss.name is required")
    try:
        check_data(cfg.data)
        check_model(cfg.model)
        check_optim(cfg.optim)
        build_loss(**cfg.loss)
    except (ValueError, TypeError) as err:
        message = str(err)
        raise ConfigError(
            message if message.split(".")[0] in GROUPS else f"loss: {message}"
        ) from None
    checks = [
        ("epochs", cfg.epochs >= 1, "must be >= 1"),
        ("checkpoint_mode", cfg.checkpoint_mode in ("max", "min"), "must be max or min"),
        ("checkpoints_to_keep", cfg.checkpoints_to_keep >= 1, "must be >= 1"),
        ("cluster.num_workers", cfg.cluster.num_workers >= 0, "must be >= 0"),
        ("cluster.max_failures", cfg.cluster.max_failures >= -1, "must be >= -1"),
        ("cluster.precision", cfg.cluster.precision in ("fp32", "bf16"), "must be fp32 or bf16"),
        (
            "cluster.placement_strategy",
            cfg.cluster.placement_strategy in PLACEMENT_STRATEGIES,
            f"must be one of {list(PLACEMENT_STRATEGIES)}",
        ),
        ("eval.knn_k", cfg.eval.knn_k >= 1, "must be >= 1"),
        (
            "data.ingest",
            cfg.data.ingest == "loader" or cfg.cluster.num_workers >= 1,
            "ray_data needs Ray Train workers (cluster.num_workers >= 1)",
        ),
        (
            "optim.warmup_epochs",
            cfg.optim.warmup_epochs <= cfg.epochs,
            f"must not exceed epochs ({cfg.epochs})",
        ),
        (
            "train.chunk_size",
            cfg.train.chunk_size is None or cfg.train.chunk_size >= 1,
            "must be >= 1 (null: one pass)",
        ),
        (
            "tracking.name",
            cfg.tracking.name in ("none", "tensorboard", "mlflow"),
            "must be one of ['none', 'tensorboard', 'mlflow']",
        ),
    ]
    for key, ok, rule in checks + _pairing_checks(cfg):
        if not ok:
            raise ConfigError(f"{key} {rule}, got {_select(cfg, key)!r}")


def _pairing_checks(cfg: TrainConfig) -> list[tuple[str, bool, str]]:
    """A two-tower model, a paired loss and image–caption data go together."""
    from raycl.data import DATASETS
    from raycl.losses import LOSSES
    from raycl.models import TWO_TOWER

    loss = cfg.loss["name"]
    paired_loss = LOSSES[loss].paired
    paired_data = DATASETS[cfg.data.name].paired
    paired_sets = [name for name, spec in DATASETS.items() if spec.paired]
    paired_losses = [name for name, cls in LOSSES.items() if cls.paired]
    two_tower = cfg.model.name == TWO_TOWER
    return [
        ("model.name", two_tower or not paired_loss, f"must be two_tower for loss {loss}"),
        (
            "loss.name",
            paired_loss or not two_tower,
            f"must be a paired loss for model two_tower: one of {paired_losses}",
        ),
        (
            "data.name",
            paired_data or not two_tower,
            f"must be image-caption pairs for model two_tower: one of {paired_sets}",
        ),
        (
            "model.name",
            two_tower or not paired_data,
            f"must be two_tower for the image-caption pairs of data {cfg.data.name}",
        ),
        (
            "data.supervised",
            not (paired_data and cfg.data.supervised),
            "must be false for image-caption pairs (the paired losses take no labels)",
        ),
    ]


def _select(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


class _one_line_errors:
    """Turn OmegaConf's multi-line errors into one-line :class:`ConfigError` s."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, traceback) -> bool:
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(err, OmegaConfBaseException):
            raise ConfigError(_one_line(err).rstrip(".")) from None
        return False


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    key = next((line for line in lines if line.startswith("full_key:")), "")
    return f"{lines[0]}{' (' + key + ')' if key else ''}" if lines else type(err).__name__
