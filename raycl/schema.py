"""The configuration's schema: one typed dataclass per section, and the run's whole config.

Every key, its type and its default. :mod:`raycl.config` composes the YAML groups against
these (Hydra structured configs: an unknown key or a wrong type is a one-line error) and
checks the values; the builders take the sections as typed objects (``DataConfig`` →
:func:`raycl.data.build_datasets`, ``ModelConfig`` → :func:`raycl.models.build_model`, …), and
:class:`TrainConfig` / :class:`TuneRunConfig` are what crosses the Ray boundary. This module
imports nothing of raycl's, so every layer can name its section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    # Image-caption pairs from files (data=pairs): parquet | webdataset, the Parquet columns
    # (null: found by name; label: none), and class names for zero-shot evaluation
    layout: str = "parquet"
    image_column: str | None = None
    caption_column: str | None = None
    label_column: str | None = None
    class_names: list[str] | None = None


@dataclass
class ModelConfig:
    name: str = "small_cnn"  # a name in raycl.models.MODELS
    width: int = 32
    cifar_stem: bool = False
    proj_hidden_dim: int | None = None
    proj_dim: int = 128
    proj_layers: int = 2
    # model=two_tower (raycl.towers): the image tower (a raycl encoder, or open_clip's vit |
    # modified_resnet) and the sizes of open_clip's towers; a state dict on disk to start
    # from. proj_dim is the joint embedding.
    image_tower: str = "small_cnn"
    vision_width: int = 64  # vit: width (heads of 32); modified_resnet: stem width
    vision_layers: int = 2  # vit: blocks; modified_resnet: blocks per stage (4 stages)
    patch_size: int = 2  # vit
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    context_length: int = 24  # tokens per caption (longer captions are cut)
    pretrained: str | None = None


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
    rounds: int | None = None  # coordinate descent: restarted descents (None: until the budget)
    restart: str = "kick"  # coordinate descent: a round starts from the best warm-up point
    # away from the optima found, else the kicked best point; or ("incumbent", CD before issue
    # 26) from the incumbent re-measured on more seeds
    warmup: int | None = None  # coordinate descent: lattice points spread over the space and
    # tried with the start first (None: 2·d + 1 for d coordinates; 0: none)
    final_checks: int | None = None  # coordinate descent: the budget's last trials re-measure
    # the best points (None: a tenth of budget_trials; 0: none)
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
