"""Contrastive training on Ray Train: one code path from a laptop CPU to a GPU cluster.

The driver (:func:`train`) builds a ``TorchTrainer``; every worker runs
:func:`train_loop_per_worker`: a DDP model, the exact global-batch loss
(:func:`raycl.distributed.distributed_loss`), a warm-up + cosine schedule, per-epoch
evaluation and a checkpoint (model, optimiser, scheduler, epoch, RNG state, metric history)
reported with ``ray.train.report``. Rerunning with the same ``storage_path`` and ``name``
resumes from the latest checkpoint; with ``cluster.max_failures`` a killed worker is replaced
and training continues from it.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from raycl.config import to_dict
from raycl.data import build_datasets
from raycl.distributed import all_reduce_sum, distributed_loss, world_size
from raycl.evaluate import alignment_from_batch, evaluate_representation
from raycl.gradcache import encode
from raycl.losses import LossTerms, build_loss
from raycl.models import build_model
from raycl.optim import build_optimizer, scaled_learning_rate, warmup_cosine
from raycl.session import RayTrainSession, Session

if TYPE_CHECKING:  # the worker side runs without Ray, Hydra or OmegaConf (raycl.bench.gpu)
    from omegaconf import DictConfig

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class TrainOutcome:
    """What a finished run leaves: its final metrics, per-epoch history and where it lives."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    initial: dict[str, float]
    path: str
    checkpoint_path: str | None


# --- worker side ----------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The per-worker training loop (Ray Train calls it on every worker)."""
    run_training(config, RayTrainSession())


def run_training(config: dict[str, Any], session: Session) -> None:
    """Train, evaluate, checkpoint and report each epoch through ``session``."""
    rank, world, device = session.rank, session.world_size, session.device
    data, optim = config["data"], config["optim"]
    _seed_everything(config["seed"] + rank)

    bundle = build_datasets(
        data["name"],
        data["root"],
        data["num_views"],
        download=data["download"],
        image_size=data["image_size"],
        num_train_classes=data["num_train_classes"],
        num_items=data["num_items"],
        num_test_items=data["num_test_items"],
        item_shape=data["item_shape"],
        num_classes=data["num_classes"],
        seed=config["seed"],
    )
    loader = DataLoader(
        bundle.train_contrastive,
        batch_size=data["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=data["loader_workers"],
        generator=torch.Generator().manual_seed(config["seed"]),
    )
    loader = session.prepare_data_loader(loader)
    model = build_model(in_channels=bundle.in_channels, **config["model"])
    model = session.prepare_model(model)
    loss_fn = build_loss(**config["loss"])

    steps = len(loader)
    if config["max_steps_per_epoch"]:
        steps = min(steps, config["max_steps_per_epoch"])
    if steps == 0:
        raise ValueError(
            f"data.batch_size={data['batch_size']} × {world} workers exceeds the training set "
            f"({len(bundle.train_contrastive)} items)"
        )
    global_batch = world * data["batch_size"]
    lr = scaled_learning_rate(
        optim["lr"], global_batch, optim["lr_scaling"], optim["base_batch_size"]
    )
    optimizer = build_optimizer(
        model, optim["name"], lr, momentum=optim["momentum"], weight_decay=optim["weight_decay"]
    )
    scheduler = warmup_cosine(
        optimizer,
        optim["warmup_epochs"] * steps,
        config["epochs"] * steps,
        optim["final_lr_fraction"],
    )
    evaluate = _evaluator(model, bundle, config["eval"], device)

    state = _restore(session.get_checkpoint(), model, optimizer, scheduler, rank)
    history: list[dict[str, float]] = state.get("history", [])
    initial: dict[str, float] = state.get("initial") or evaluate(final=True)
    start = state.get("epoch", -1) + 1
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if config["cluster"]["precision"] == "bf16"
        else nullcontext()
    )

    for epoch in range(start, config["epochs"]):
        _maybe_inject_fault(config, epoch, rank)
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        started = time.perf_counter()
        means, balance = _train_epoch(
            model,
            loader,
            loss_fn,
            optimizer,
            scheduler,
            steps,
            epoch,
            device,
            autocast,
            supervised=data["supervised"],
            chunk_size=config["train"]["chunk_size"],
        )
        seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            **means,
            "lr": scheduler.get_last_lr()[0],
            "global_batch": global_batch,
            "train_seconds": seconds,
            "samples_per_s": steps * global_batch / seconds,
            **balance,
            **evaluate(final=epoch == config["epochs"] - 1),
        }
        history.append(metrics)
        _report(session, metrics, model, optimizer, scheduler, epoch, history, initial)


def _train_epoch(
    model,
    loader,
    loss_fn,
    optimizer,
    scheduler,
    steps,
    epoch,
    device,
    autocast,
    supervised,
    chunk_size=None,
) -> tuple[dict[str, float], dict[str, float]]:
    """``steps`` optimisation steps; the epoch's mean global loss terms and the balance
    diagnostic of its first step. Raises :class:`TrainingDiverged` on a non-finite value."""
    model.train()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    balance: dict[str, float] = {}
    for step, (views, labels) in enumerate(loader):
        if step >= steps:
            break
        try:
            result = training_step(
                model,
                views,
                labels if supervised else None,
                loss_fn,
                optimizer,
                device=device,
                chunk_size=chunk_size,
                autocast=autocast,
                diagnose=step == 0,
            )
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at epoch {epoch}, step {step}") from None
        scheduler.step()
        if step == 0:
            balance = result.balance
        alignment = torch.tensor(alignment_from_batch(result.embeddings))
        sums += torch.stack([*result.global_terms, alignment]).to(sums)
    n = max(steps, 1)
    means = {
        "loss": float(sums[0] / n),
        "loss_pos": float(sums[1] / n),
        "loss_ent": float(sums[2] / n),
        "train_alignment": float(all_reduce_sum(sums[3:4])[0] / n / world_size()),
    }
    return means, balance


class StepResult(NamedTuple):
    """What one optimisation step leaves for logging."""

    global_terms: LossTerms  # the global batch's loss terms (detached)
    embeddings: torch.Tensor  # this worker's embeddings (V, B, D), detached
    balance: dict[str, float]  # the balance diagnostic (empty unless asked for)


def training_step(
    model: torch.nn.Module,
    views: torch.Tensor,
    labels: torch.Tensor | None,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    chunk_size: int | None = None,
    autocast=None,
    diagnose: bool = False,
) -> StepResult:
    """One step on this worker's ``views`` (B, V, ...): encode, exact global loss, update.

    The encoder runs in one pass (``chunk_size`` None) or in gradient-cached chunks of
    ``chunk_size`` items (:func:`raycl.gradcache.encode`); everything else — the gathered loss,
    the finiteness checks, the balance diagnostic (``diagnose``) and the update — is the same
    code for both. Raises :class:`TrainingDiverged` on non-finite embeddings or loss (every
    rank sees the same verdict, so all stop together) before any parameter changes.
    """
    encoded = encode(
        model,
        views,
        chunk_size,
        device=device,
        autocast=autocast,
        select=lambda output: output[1],
    )
    # (V, B, D); the loss runs in float32 at least (bf16 autocast output is promoted)
    embeddings = encoded.embeddings.to(torch.promote_types(encoded.embeddings.dtype, torch.float32))
    embeddings = embeddings.transpose(0, 1)
    if not _all_finite(embeddings):
        raise TrainingDiverged("loss became non-finite")
    if labels is not None:
        labels = labels.to(device, non_blocking=True)
    out = distributed_loss(loss_fn, embeddings, labels)
    if not torch.isfinite(out.global_terms.total):
        raise TrainingDiverged("loss became non-finite")
    balance = _balance_diagnostic(out.local, loss_fn.weight, embeddings) if diagnose else {}
    optimizer.zero_grad(set_to_none=True)
    out.backward_total.backward()
    encoded.backward()
    optimizer.step()
    return StepResult(out.global_terms, embeddings.detach(), balance)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _evaluator(model, bundle, eval_cfg: dict[str, Any], device: torch.device):
    def evaluate(final: bool) -> dict[str, float]:
        return evaluate_representation(
            model,
            bundle.train_eval,
            bundle.test_eval,
            knn_k=eval_cfg["knn_k"],
            knn_temperature=eval_cfg["knn_temperature"],
            linear_probe=final and eval_cfg["linear_probe"],
            recall_ks=eval_cfg["recall_ks"] or None,
            batch_size=eval_cfg["batch_size"],
            device=device,
        )

    return evaluate


def _all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` is finite on every rank (all ranks agree, so they stop together)."""
    bad = (~torch.isfinite(t)).sum().double().reshape(1)
    return bool(all_reduce_sum(bad)[0] == 0)


def _balance_diagnostic(local_terms, weight: float, embeddings: torch.Tensor) -> dict[str, float]:
    """‖∂pos/∂z‖ and ‖∂(weight·ent)/∂z‖ over the global batch: the balance the search tunes."""
    grads = [
        torch.autograd.grad(term, embeddings, retain_graph=True)[0]
        for term in (local_terms.pos, weight * local_terms.ent)
    ]
    squares = all_reduce_sum(torch.stack([g.double().pow(2).sum() for g in grads]))
    return {"grad_norm_pos": float(squares[0].sqrt()), "grad_norm_ent": float(squares[1].sqrt())}


def _maybe_inject_fault(config: dict[str, Any], epoch: int, rank: int) -> None:
    """Chaos test hook: SIGKILL the last worker once when ``fault_injection_epoch`` starts."""
    fault_epoch = config.get("fault_injection_epoch")
    if fault_epoch is None or epoch != fault_epoch or rank != config["cluster"]["num_workers"] - 1:
        return
    marker = Path(config["storage_path"]) / config["name"] / ".fault-injected"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _restore(checkpoint, model, optimizer, scheduler, rank: int) -> dict[str, Any]:
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
        rng_file = Path(directory) / f"rng-rank{rank}.pt"
        rng = torch.load(rng_file, weights_only=False) if rng_file.exists() else None
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if rng is not None:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
    return state


def _report(session, metrics, model, optimizer, scheduler, epoch, history, initial) -> None:
    rank = session.rank
    with tempfile.TemporaryDirectory() as directory:
        torch.save(
            {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
            Path(directory) / f"rng-rank{rank}.pt",
        )
        if rank == 0:
            state = {
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "initial": initial,
            }
            torch.save(state, Path(directory) / STATE_FILE)
            (Path(directory) / HISTORY_FILE).write_text(
                json.dumps({"history": history, "initial": initial})
            )
        session.report(metrics, directory, name=f"epoch-{epoch:05d}")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def epoch_line(metrics: dict[str, float], epochs: int) -> str:
    """One console line of progress for an epoch's report."""
    knn = f"  kNN {metrics['knn_top1']:.2f}%" if "knn_top1" in metrics else ""
    return (
        f"epoch {metrics['epoch'] + 1:>3}/{epochs}  loss {metrics['loss']:.4f} "
        f"(pos {metrics['loss_pos']:.4f}, ent {metrics['loss_ent']:.4f}){knn}  "
        f"lr {metrics['lr']:.2e}"
    )


def _progress_callback(epochs: int):
    """A Ray Train callback printing one line per reported epoch (once, from the controller)."""
    from ray.train import UserCallback

    class EpochProgress(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            print(epoch_line(metrics[0], epochs), flush=True)

    return EpochProgress()


# --- driver side ----------------------------------------------------------------------------


def trainer_for(cfg: DictConfig, callbacks: list | None = None):
    """The ``TorchTrainer`` for a config, with extra Ray Train ``callbacks``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cluster = cfg.cluster
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(
            num_workers=cluster.num_workers,
            use_gpu=cluster.use_gpu,
            resources_per_worker={"CPU": cluster.cpus_per_worker} if cluster.num_workers else None,
        ),
        run_config=RunConfig(
            name=cfg.name,
            callbacks=[*(callbacks or []), _progress_callback(cfg.epochs)],
            storage_path=storage_path(cfg),
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.checkpoints_to_keep,
                checkpoint_score_attribute=cfg.checkpoint_metric,
                checkpoint_score_order="max",
            ),
        ),
    )


def storage_path(cfg: DictConfig) -> str:
    """``cfg.storage_path`` made absolute (URIs such as ``s3://`` are kept)."""
    path = cfg.storage_path
    return path if "://" in path else str(Path(path).expanduser().resolve())


def connect_ray(cfg: DictConfig) -> None:
    """Join ``cluster.address`` (``auto`` or a URI), or start a fresh local Ray when it is null.

    Never ``ray.init()`` without an address: that joins whatever cluster ``ray start`` last
    recorded on the machine, even a dead one.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.cluster.address or "local")


def train(cfg: DictConfig) -> TrainOutcome:
    """Run (or resume) training on Ray Train; write ``metrics.parquet``/``.csv`` beside it."""
    connect_ray(cfg)
    from ray.train import TrainingFailedError

    try:
        result = trainer_for(cfg).fit()
    except TrainingFailedError as err:
        diverged = re.search(r"loss became non-finite at epoch \d+, step \d+", str(err))
        if diverged:
            raise TrainingDiverged(
                f"{diverged.group(0)}; the last good checkpoint is kept"
            ) from None
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint under {result.path}")
    with result.checkpoint.as_directory() as directory:
        saved = json.loads((Path(directory) / HISTORY_FILE).read_text())
    outcome = TrainOutcome(
        metrics=saved["history"][-1],
        history=saved["history"],
        initial=saved["initial"],
        path=result.path,
        checkpoint_path=result.checkpoint.path,
    )
    write_history(outcome)
    return outcome


def write_history(outcome: TrainOutcome) -> None:
    """Per-epoch metrics as ``metrics.parquet`` and ``metrics.csv`` in the run directory."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if "://" in outcome.path:
        return
    columns = sorted({key for row in outcome.history for key in row})
    table = pa.table({c: [row.get(c, math.nan) for row in outcome.history] for c in columns})
    pq.write_table(table, Path(outcome.path) / "metrics.parquet")
    pacsv.write_csv(table, Path(outcome.path) / "metrics.csv")
