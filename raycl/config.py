"""The training configuration: a strict schema (Hydra structured configs) and its loader.

``conf/`` holds the YAML groups (``loss/``, ``data/``, ``model/``, ``optim/``, ``cluster/``);
this module holds their schema, so an unknown key or a wrong type is a one-line error naming
the key. Loss parameters are checked by :func:`raycl.losses.build_loss` against the loss's
own signature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Hydra and OmegaConf are imported where used: the schema needs neither
    from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    num_views: int = 2
    batch_size: int = 256  # items per worker; the loss sees num_views × this embeddings
    image_size: int | None = None
    num_train_classes: int | None = None
    loader_workers: int = 0
    supervised: bool = False  # give labels to the loss (positives = same class)
    # Generated data sets (mnist1d, synthetic): training and test items (None: the data
    # set's default); synthetic also needs the item shape (C, H, W) and class count.
    num_items: int | None = None
    num_test_items: int | None = None
    item_shape: list[int] | None = None
    num_classes: int | None = None


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    width: int = 32
    cifar_stem: bool = False
    proj_hidden_dim: int | None = None
    proj_dim: int = 128
    proj_layers: int = 2


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3  # at base_batch_size; scaled to the global batch by lr_scaling
    lr_scaling: str = "linear"
    base_batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    final_lr_fraction: float = 0.0


@dataclass
class ClusterConfig:
    num_workers: int = 1  # 0: Ray Train local mode, in the driver process
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    address: str | None = None  # Ray cluster address; None starts a local one
    max_failures: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast, GPU)


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
    # A size that does not divide data.batch_size leaves a smaller last chunk; >= the batch
    # is one chunk. BatchNorm normalises each chunk by its own statistics (as per device
    # under DDP) and updates its running statistics once per chunk in the second pass (k
    # times per step for k chunks, as in gradient accumulation; once with one chunk).
    chunk_size: int | None = None


@dataclass
class TrainConfig:
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "infonce"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: StepConfig = field(default_factory=StepConfig)
    epochs: int = 30
    seed: int = 0
    name: str = "raycl-train"
    storage_path: str = "raycl_runs"
    checkpoints_to_keep: int = 2
    checkpoint_metric: str = "knn_top1"
    max_steps_per_epoch: int | None = None
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
    resume: bool = False


@dataclass
class TuneRunConfig(TrainConfig):
    search: SearchConfig = field(default_factory=SearchConfig)
    # nested like the config: space.loss.temperature = {scale, lower, upper, start, step, ...}
    space: dict[str, Any] = field(default_factory=dict)


def schema_defaults() -> dict[str, Any]:
    """The training schema's defaults as a plain dict, without Hydra (no ``conf/`` YAML
    applied): a :func:`raycl.train.run_training` config where Hydra is not installed."""
    return asdict(TrainConfig())


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="tune_schema", node=TuneRunConfig)


class ConfigError(ValueError):
    """A bad configuration or override (one line, naming the key)."""


def load_config(
    overrides: list[str] | None = None, config_name: str = "train", config_dir: Path | None = None
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra ``overrides`` and validate it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_schema()
    directory = Path(config_dir or CONF_DIR).resolve()
    if not directory.is_dir():
        raise ConfigError(f"config directory not found: {directory}")
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as err:
        cause = f": {_one_line(err.__cause__)}" if err.__cause__ else ""
        raise ConfigError(_one_line(err).rstrip(".") + cause) from None
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Checks the schema cannot express: allowed values and ranges, loss parameters."""
    from omegaconf import OmegaConf

    from raycl.losses import build_loss

    checks = [
        ("data.num_views", cfg.data.num_views >= 2, "must be >= 2"),
        ("data.batch_size", cfg.data.batch_size >= 2, "must be >= 2"),
        ("epochs", cfg.epochs >= 1, "must be >= 1"),
        ("cluster.num_workers", cfg.cluster.num_workers >= 0, "must be >= 0"),
        ("cluster.max_failures", cfg.cluster.max_failures >= -1, "must be >= -1"),
        ("cluster.precision", cfg.cluster.precision in ("fp32", "bf16"), "must be fp32 or bf16"),
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        (
            "train.chunk_size",
            cfg.train.chunk_size is None or cfg.train.chunk_size >= 1,
            "must be >= 1 (null: one pass)",
        ),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {OmegaConf.select(cfg, key)!r}")
    loss = OmegaConf.to_container(cfg.loss)
    if "name" not in loss:
        raise ConfigError("loss.name is required")
    try:
        build_loss(**loss)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"loss: {err}") from None


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain, resolved dict (what travels to Ray workers and into checkpoints)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    key = next((line for line in lines if line.startswith("full_key:")), "")
    return f"{lines[0]}{' (' + key + ')' if key else ''}" if lines else type(err).__name__
