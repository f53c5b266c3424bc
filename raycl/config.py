"""The configuration: a strict schema (Hydra structured configs), its loader and overrides.

``raycl/conf/`` holds the YAML groups (``loss/``, ``data/``, ``model/``, ``optim/``,
``cluster/``, ``search/``, ``space/``), shipped inside the package; ``config_dirs`` add a
user's own groups (Hydra's search path). This module declares the schema, so an unknown key
or a wrong type is a one-line error naming the key, and hands out *typed* configs
(:class:`TrainConfig`, :class:`TuneRunConfig`): what crosses the Ray boundary and what the
builders take. Each section's values are checked by the registry that builds it
(:func:`raycl.data.check_data`, :func:`raycl.models.check_model`,
:func:`raycl.losses.build_loss`, :func:`raycl.optim.check_optim`); the sections without a
builder (run, cluster, eval, train) are checked here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raycl.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("loss", "data", "model", "optim", "cluster", "tracking", "search", "space")


@dataclass
class DataConfig:
    name: str = "digits"  # a name in raycl.data.DATASETS
    root: str | None = None
    download: bool = False
    num_views: int = 2
    batch_size_per_worker: int = 256  # items; the loss sees num_views × this per worker
    image_size: int | None = None
    num_train_classes: int | None = None
    loader_workers: int = 0
    supervised: bool = False  # give labels to the loss (positives = same class)
    ingest: str = "loader"  # loader (a DataLoader in each worker) | ray_data (Parquet only)
    on_bad_item: str = "error"  # error (one line naming the item) | skip (counted: bad_items)
    # Generated data sets (mnist1d, synthetic): training and test items (None: the data
    # set's default); synthetic also needs the item shape (C, H, W) and class count.
    num_items: int | None = None
    num_test_items: int | None = None
    item_shape: list[int] | None = None
    num_classes: int | None = None


@dataclass
class ModelConfig:
    name: str = "small_cnn"  # a name in raycl.models.MODELS
    width: int = 32
    cifar_stem: bool = False
    proj_hidden_dim: int | None = None
    proj_dim: int = 128
    proj_layers: int = 2


@dataclass
class OptimConfig:
    name: str = "adamw"  # a name in raycl.optim.OPTIMIZERS
    lr: float = 1e-3  # at base_batch_size; scaled to the global batch by lr_scaling
    lr_scaling: str = "linear"
    base_batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    final_lr_fraction: float = 0.0


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class ClusterConfig:
    num_workers: int = 1  # 0: Ray Train local mode, in the driver process
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    address: str | None = None  # Ray cluster address; None starts a local one
    max_failures: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast, GPU)
    # how Ray places the workers: PACK (fewest nodes), SPREAD, STRICT_PACK, STRICT_SPREAD
    placement_strategy: str = "PACK"


@dataclass
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_probe: bool = True
    recall_ks: list[int] = field(default_factory=list)
    batch_size: int = 512


@dataclass
class StepConfig:
    # Per-worker encoder micro-batch in items (each with its V views); null: one pass over
    # the batch. Set, a step encodes the batch in chunks twice — without autograd, then with
    # it, replaying each chunk's RNG state — around one exact loss on all embeddings
    # (raycl.gradcache): the same gradients, one chunk's activation memory, one extra forward.
    # A size that does not divide data.batch_size_per_worker leaves a smaller last chunk;
    # >= the batch is one chunk. BatchNorm normalises each chunk by its own statistics (as per
    # device under DDP) and updates its running statistics once per chunk in the second pass
    # (k times per step for k chunks, as in gradient accumulation; once with one chunk).
    chunk_size: int | None = None


@dataclass
class TrackingConfig:
    name: str = "none"  # none | tensorboard | mlflow (through Ray's own integrations)
    uri: str | None = None  # mlflow tracking URI (default: file store beside the runs)


@dataclass
class TrainConfig:
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "infonce"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: StepConfig = field(default_factory=StepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    epochs: int = 30
    seed: int = 0
    name: str = "raycl-train"
    storage_path: str = "raycl_runs"
    checkpoints_to_keep: int = 2
    checkpoint_metric: str = "knn_top1"  # a reported metric that ranks checkpoints ...
    checkpoint_mode: str = "max"  # ... max (higher is better) | min (e.g. loss)
    max_steps_per_epoch: int | None = None
    fresh: bool = False  # a run of this name exists: move it aside and start anew
    verbose: bool = False  # show Ray's own per-report and per-checkpoint log lines
    # Chaos testing: SIGKILL the last worker once at the start of this epoch.
    fault_injection_epoch: int | None = None


@dataclass
class SearchConfig:
    method: str = "cd"  # a name in raycl.search.methods.METHODS: cd | random | asha | tpe | gp
    metric: str = "knn_top1"
    mode: str = "max"
    budget_trials: int | None = 20
    budget_epochs: int | None = None  # total epochs over all trials (equal compute)
    max_concurrent_trials: int = 2
    eps: float = 0.0  # coordinate descent: minimum improvement that counts
    repeats: int = 1  # seeds per point (every method; the searcher sees their mean)
    noise: float | None = None  # coordinate descent: re-measure wins smaller than this
    grace_period: int = 1  # ASHA: epochs before the first cut
    reduction_factor: int = 3  # ASHA
    cpus_per_trial: float = 1.0
    reuse_actors: bool = True  # a trial's process trains the next trial (no start-up each)
    resume: bool = False


@dataclass
class TuneRunConfig(TrainConfig):
    search: SearchConfig = field(default_factory=SearchConfig)
    # nested like the config: space.loss.temperature = {scale, lower, upper, start, step, ...}
    space: dict[str, Any] = field(default_factory=dict)


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
        cause = f": {_one_line(err.__cause__)}" if err.__cause__ else ""
        raise ConfigError(_one_line(err).rstrip(".") + cause) from None


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


def to_yaml(cfg: TrainConfig) -> str:
    """The config as YAML (``raycl train --cfg``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


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
            (cfg.train.chunk_size or 0) <= cfg.data.batch_size_per_worker,
            f"must not exceed data.batch_size_per_worker ({cfg.data.batch_size_per_worker})",
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
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {_select(cfg, key)!r}")
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


def _select(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
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
