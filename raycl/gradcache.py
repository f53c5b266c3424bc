"""Gradient-cached encoder passes: the exact gradient of a batch loss in encoder chunks.

The loss of a contrastive batch couples every item, so the encoder's activations for the
whole batch are normally held until ``backward``. GradCache (Gao et al. 2021) splits the work:

    pass 1   z_c = f(x_c) for every chunk c without autograd (RNG state before each chunk saved)
    loss     L(z) with z = [z_1; …; z_k] a leaf tensor: one backward gives g = ∂L/∂z
    pass 2   for every chunk: restore its RNG state, z_c = f(x_c) with autograd, backward(z_c, g_c)

and ``Σ_c J_cᵀ g_c = ∂L/∂θ`` is exactly the single-pass gradient as long as pass 2 recomputes
pass 1's ``z_c``: same parameters, same random draws (dropout; replayed from the saved CPU and
CUDA generator states inside :func:`torch.random.fork_rng`, so the global generators end where
pass 1 left them), same batch statistics. BatchNorm therefore normalises each chunk by its own
statistics (as it does per device under DDP); pass 1 leaves the module's buffers as it found
them, so running statistics are updated only in pass 2, once per chunk, like gradient
accumulation over micro-batches (once per step when the batch is one chunk).

Peak memory: one chunk's activations plus O(B·d) for the batch's embeddings and their
gradient; the inputs stay where the caller keeps them (e.g. host memory) and each chunk is
moved to ``device`` in both passes. Time: one extra forward. Pure torch (no Ray).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["EncodedBatch", "RngState", "encode"]

Select = Callable[[Any], Tensor]


class RngState:
    """The CPU generator's state and that of the CUDA ``devices``, captured now, to replay later.

    ``with state.replay():`` runs its body from the captured state inside
    :func:`torch.random.fork_rng`, which restores the generators when the body ends.
    """

    def __init__(self, devices: list[int]) -> None:
        self.devices = devices
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in devices]

    @contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda, strict=True):
                torch.cuda.set_rng_state(state, device)
            yield


@dataclass
class EncodedBatch:
    """A batch's embeddings and what finishes its backward.

    Call ``backward()`` of the loss of ``embeddings`` first, then :meth:`backward`: a no-op for
    one pass (the loss's backward already reached the parameters), pass 2 for chunks.
    """

    embeddings: Tensor
    _finish: Callable[[], None] = field(default=lambda: None, repr=False)

    def backward(self) -> None:
        self._finish()


def encode(
    model: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    chunk_size: int | None = None,
    *,
    device: torch.device | None = None,
    autocast: AbstractContextManager | None = None,
    select: Select | None = None,
    replay_rng: bool = True,
) -> EncodedBatch:
    """Encode ``inputs`` (batch along dim 0; a tuple of such tensors, e.g. a two-tower model's
    images and tokens, is chunked alike and passed as a tuple) with ``model``, in one pass or
    gradient-cached chunks.

    ``chunk_size`` None: ``select(model(inputs))`` with autograd, as a plain training step.
    Otherwise pass 1 (module docstring) over chunks of ``chunk_size`` items — the last one
    smaller when it does not divide the batch; one chunk when it is ≥ the batch — returns the
    concatenated embeddings as a leaf that requires grad, and :meth:`EncodedBatch.backward` runs
    pass 2 with the gradient the loss left in it. A ``DistributedDataParallel`` model runs
    pass 1 unwrapped (no hooks, no buffer broadcast) and pass 2 wrapped, under ``no_sync`` for
    every chunk but the last, so the step all-reduces gradients once.

    ``device``: where chunks run (default: where ``inputs`` are); ``autocast``: a context both
    passes' forwards run in (e.g. bf16); ``select`` picks the embeddings from the model's output
    (default: the output itself); ``replay_rng=False`` disables RNG replay (tests only: pass 2
    then draws new dropout masks and the gradient is wrong).
    """
    parts = inputs if isinstance(inputs, tuple) else (inputs,)
    device = parts[0].device if device is None else torch.device(device)
    autocast = autocast if autocast is not None else nullcontext()
    select = select if select is not None else _identity
    if chunk_size is None:
        with autocast:
            return EncodedBatch(select(model(_on(device, parts, inputs))))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size!r}")
    chunks = [
        tuple(part[start : start + chunk_size] for part in parts)
        for start in range(0, len(parts[0]), chunk_size)
    ]
    module = model.module if isinstance(model, DistributedDataParallel) else model
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]

    states, outputs = [], []
    saved_buffers = [(b, b.detach().clone()) for b in module.buffers()]
    with torch.no_grad(), autocast:
        for chunk in chunks:
            states.append(RngState(cuda_devices))
            outputs.append(select(module(_on(device, chunk, inputs))))
        for buffer, saved in saved_buffers:
            buffer.copy_(saved)
    embeddings = torch.cat(outputs).requires_grad_(True)
    del outputs, saved_buffers

    def pass_2() -> None:
        grad = embeddings.grad if embeddings.grad is not None else torch.zeros_like(embeddings)
        start = 0
        for index, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            last = index == len(chunks) - 1
            sync = nullcontext() if last or module is model else model.no_sync()
            replay = state.replay() if replay_rng else nullcontext()
            with sync:
                with replay, autocast:
                    out = select(model(_on(device, chunk, inputs)))
                out.backward(grad[start : start + len(out)])
            start += len(out)

    return EncodedBatch(embeddings, pass_2)


def _on(device: torch.device, parts: tuple[Tensor, ...], like: Any) -> Any:
    """``parts`` moved to ``device``: a tuple if the caller's inputs were one, else a tensor."""
    moved = tuple(part.to(device, non_blocking=True) for part in parts)
    return moved if isinstance(like, tuple) else moved[0]


def _identity(output: Any) -> Tensor:
    return output
