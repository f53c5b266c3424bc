"""The per-worker training loop: one code path from a laptop CPU to a GPU cluster.

:func:`run_training` is what every Ray Train worker (and every single-process Tune trial,
landscape run or GPU check) runs, through a :class:`~raycl.session.Session`: the typed config
in, a DDP model, the exact global-batch loss (:func:`raycl.distributed.distributed_loss`),
a warm-up + cosine schedule, per-epoch evaluation, and a checkpoint (model, optimiser,
scheduler, epoch, RNG state, metric history; its format is :mod:`raycl.checkpoint`) reported
each epoch. Restarted from a checkpoint it continues where it stopped. The Ray driver that
starts the workers is :mod:`raycl.runner`. Needs neither Ray, Hydra nor OmegaConf.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from raycl.checkpoint import (
    good_checkpoint,
    load_rng,
    load_state,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from raycl.config import redacted
from raycl.data import DatasetBundle, build_datasets
from raycl.distributed import all_reduce_sum, distributed_loss, world_size
from raycl.errors import DataError, TrainingDiverged
from raycl.evaluate import alignment_from_batch, evaluate_representation
from raycl.evaluate_towers import evaluate_towers
from raycl.gradcache import encode
from raycl.losses import ContrastiveLoss, LossTerms, build_loss
from raycl.metrics import DegenerateEmbeddings
from raycl.models import build_model
from raycl.optim import build_optimization, restore_schedule
from raycl.schema import TrainConfig
from raycl.session import RayTrainSession, Session


@dataclass
class TrainingRun:
    """Everything one worker's epochs share: built once by :func:`run_training`."""

    config: TrainConfig
    session: Session
    bundle: DatasetBundle
    loader: Any  # an iterable of (views (B, V, ...), labels (B,)) batches
    model: torch.nn.Module
    loss_fn: ContrastiveLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: int  # optimisation steps per epoch
    global_batch: int
    autocast: AbstractContextManager
    history: list[dict[str, float]] = field(default_factory=list)
    initial: dict[str, float] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.session.device


# --- the loop -------------------------------------------------------------------------------


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What Ray Train runs on every worker: ``loop_config["config"]`` is the typed config."""
    config = loop_config["config"]
    run_training(config, RayTrainSession(verbose=config.verbose))


def run_training(config: TrainConfig, session: Session) -> None:
    """Train, evaluate, checkpoint and report each epoch through ``session``."""
    run = prepare(config, session)
    state = _restore(session.get_checkpoint(), run)
    run.history = state.get("history", [])
    run.initial = state.get("initial") or evaluate(run, final=True)
    for epoch in range(state.get("epoch", -1) + 1, config.epochs):
        _maybe_inject_fault(config, epoch, session.rank)
        if hasattr(run.loader, "sampler") and hasattr(run.loader.sampler, "set_epoch"):
            run.loader.sampler.set_epoch(epoch)
        started, bad_before = time.perf_counter(), run.bundle.train_contrastive.skipped
        means, balance = train_epoch(run, epoch)
        trained = time.perf_counter()
        try:
            scores = evaluate(run, final=epoch == config.epochs - 1)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at the evaluation after epoch {epoch}") from None
        bad = all_reduce_sum(torch.tensor([run.bundle.train_contrastive.skipped - bad_before]))
        metrics = {
            "epoch": epoch,
            **means,
            "lr": run.scheduler.get_last_lr()[0],
            "global_batch": run.global_batch,
            "steps": run.steps,
            "train_seconds": trained - started,
            "samples_per_s": run.steps * run.global_batch / (trained - started),
            **balance,
            "bad_items": int(bad[0]),
            **scores,
            "eval_seconds": time.perf_counter() - trained,
        }
        run.history.append(metrics)
        _report(run, metrics, epoch)


def prepare(config: TrainConfig, session: Session) -> TrainingRun:
    """Build one worker's data, model, loss, optimiser and schedule from the config."""
    data = config.data
    _seed_everything(config.seed + session.rank)
    bundle = build_datasets(data, seed=config.seed)
    loader = session.training_batches(bundle.train_contrastive, data, config.seed)
    loss_fn = build_loss(**config.loss)
    image_size = bundle.test_eval[0][0].shape[-1]
    model = build_model(config.model, bundle.in_channels, loss_fn.logit_head(), image_size)
    model = session.prepare_model(model)
    steps = len(loader)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    if steps == 0:
        raise DataError(
            f"data.batch_size_per_worker={data.batch_size_per_worker} × {session.world_size} "
            f"workers exceeds the training set ({len(bundle.train_contrastive)} items)"
        )
    global_batch = session.world_size * data.batch_size_per_worker
    optimizer, scheduler = build_optimization(
        model, config.optim, global_batch, steps, config.epochs
    )
    return TrainingRun(
        config,
        session,
        bundle,
        loader,
        model,
        loss_fn,
        optimizer,
        scheduler,
        steps,
        global_batch,
        step_precision(config.cluster.precision, session.device),
    )


def step_precision(precision: str, device: torch.device) -> AbstractContextManager:
    """The context a training step's forward passes run in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_epoch(run: TrainingRun, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
    """``run.steps`` optimisation steps; the epoch's mean global loss terms and the balance
    diagnostic of its first step. Raises :class:`TrainingDiverged` on a non-finite value."""
    run.model.train()
    sums = torch.zeros(4, dtype=torch.float64, device=run.device)
    balance: dict[str, float] = {}
    for step, (views, labels) in enumerate(run.loader):
        if step >= run.steps:
            break
        if isinstance(views, list | tuple) and isinstance(views[1], list | tuple):
            views = (views[0], _unwrap(run.model).tokenize(views[1]))  # captions → tokens
        try:
            result = training_step(
                run.model,
                views,
                labels if run.config.data.supervised else None,
                run.loss_fn,
                run.optimizer,
                device=run.device,
                chunk_size=run.config.train.chunk_size,
                autocast=run.autocast,
                diagnose=step == 0,
            )
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at epoch {epoch}, step {step}") from None
        run.scheduler.step()
        if step == 0:
            balance = result.balance
        alignment = torch.tensor(alignment_from_batch(result.embeddings))
        sums += torch.stack([*result.global_terms, alignment]).to(sums)
    n = max(run.steps, 1)
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
    views: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor | None,
    loss_fn: ContrastiveLoss,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    chunk_size: int | None = None,
    autocast: AbstractContextManager | None = None,
    diagnose: bool = False,
) -> StepResult:
    """One step on this worker's ``views`` (B, V, ...) — or a two-tower model's pairs
    ``(images, tokens)``, whose embeddings are two views — : encode, exact global loss, update.

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
    dtype = torch.promote_types(encoded.embeddings.dtype, torch.float32)
    embeddings = encoded.embeddings.to(dtype).transpose(0, 1)
    _check_embeddings(embeddings)
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


def evaluate(run: TrainingRun, final: bool) -> dict[str, float]:
    """The representation's monitors on the evaluation splits (the linear probe if ``final``)."""
    settings = run.config.eval
    towers = {}
    if run.bundle.captions is not None:
        towers = evaluate_towers(
            run.model,
            run.bundle.captions,
            run.bundle.test_eval,
            batch_size=settings.batch_size,
            device=run.device,
        )
    try:
        return towers | evaluate_representation(
            run.model,
            run.bundle.train_eval,
            run.bundle.test_eval,
            knn_k=settings.knn_k,
            knn_temperature=settings.knn_temperature,
            linear_probe=final and settings.linear_probe,
            recall_ks=settings.recall_ks or None,
            batch_size=settings.batch_size,
            device=run.device,
        )
    except DegenerateEmbeddings:  # every feature zero after the epoch's last update
        raise TrainingDiverged("the embeddings collapsed to zero") from None


# --- helpers --------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_embeddings(embeddings: torch.Tensor) -> None:
    """Stop on non-finite embeddings, or on embeddings that are zero on every rank (a
    collapse: the loss would normalise zeros); one all-reduce, so all ranks stop together."""
    counts = torch.stack([(~torch.isfinite(embeddings)).sum(), (embeddings != 0).sum()])
    nonfinite, nonzero = all_reduce_sum(counts.double()).tolist()
    if nonfinite:
        raise TrainingDiverged("loss became non-finite")
    if not nonzero:
        raise TrainingDiverged("the embeddings collapsed to zero")


def _balance_diagnostic(local_terms, weight: float, embeddings: torch.Tensor) -> dict[str, float]:
    """‖∂pos/∂z‖ and ‖∂(weight·ent)/∂z‖ over the global batch: the balance the search tunes."""
    grads = [
        torch.autograd.grad(term, embeddings, retain_graph=True)[0]
        for term in (local_terms.pos, weight * local_terms.ent)
    ]
    squares = all_reduce_sum(torch.stack([g.double().pow(2).sum() for g in grads]))
    return {"grad_norm_pos": float(squares[0].sqrt()), "grad_norm_ent": float(squares[1].sqrt())}


def _maybe_inject_fault(config: TrainConfig, epoch: int, rank: int) -> None:
    """Chaos test hook: SIGKILL the last worker once when ``fault_injection_epoch`` starts."""
    fault_epoch = config.fault_injection_epoch
    if fault_epoch is None or epoch != fault_epoch or rank != config.cluster.num_workers - 1:
        return
    marker = Path(config.storage_path) / config.name / ".fault-injected"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _restore(checkpoint: Any, run: TrainingRun) -> dict[str, Any]:
    """Load the newest good checkpoint into the run; its state dict (empty without one)."""
    if checkpoint is not None:
        checkpoint = good_checkpoint(checkpoint)
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as directory:
        state = load_state(directory)
        rng = load_rng(directory, run.session.rank)
    _unwrap(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    restore_schedule(run.scheduler, state["scheduler"])
    if rng is not None:
        set_rng_states(rng)
        generator = _loader_generator(run)
        if generator is not None and "loader" in rng:
            generator.set_state(rng["loader"])
    return state


def _report(run: TrainingRun, metrics: dict[str, float], epoch: int) -> None:
    """Write this epoch's checkpoint (rank 0: the state; every rank: its RNG) and report."""
    rank = run.session.rank
    rng = rng_states()
    generator = _loader_generator(run)
    if generator is not None:  # the shuffle order and loader workers' seeds of later epochs
        rng["loader"] = generator.get_state()
    state = record = None
    if rank == 0:
        state = {
            "model": _unwrap(run.model).state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "epoch": epoch,
            "history": run.history,
            "initial": run.initial,
        }
        record = _run_record(run)
    with tempfile.TemporaryDirectory() as directory:
        write_checkpoint(Path(directory), rank, rng, state, record)
        run.session.report(metrics, directory, name=f"epoch-{epoch:05d}")


def _run_record(run: TrainingRun) -> dict[str, Any]:
    """What a checkpoint needs to be used without its run: the config and the input."""
    item = run.bundle.test_eval[0][0]
    return {
        "config": dataclasses.asdict(redacted(run.config)),  # no credentials in checkpoints
        "in_channels": run.bundle.in_channels,
        "input_shape": list(item.shape),
        "num_classes": run.bundle.num_classes,
    }


def _loader_generator(run: TrainingRun) -> torch.Generator | None:
    """The training loader's own generator (None for Ray Data shards)."""
    return getattr(run.loader, "generator", None)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)
