"""``raycl bench pairs``: the two-tower losses (CLIP, SigLIP) — tiled and materialised —
against open_clip's ``ClipLoss`` and ``SigLipLoss`` and against their GEMM limit.

For every family and batch of N image–text pairs (d-dimensional features, forward + backward
through the logit head, the learnable scale and bias included) it measures, each in a fresh
process (times and peak memory in separate ones, as ``raycl bench loss`` does):

* open_clip's loss on the normalised features (the baseline),
* raycl's materialised and tiled engines,
* the *limit*: the image×text tiles' forward GEMM, one ``exp`` and the two backward GEMMs —
  the work an exact loss over all N² pairs cannot avoid,

and the tiled engine's peak bytes per pair (the slope between the two largest sizes), from
which it states the memory of a batch far beyond what a CPU can time (``--extrapolate``).
"""

from __future__ import annotations

import argparse
import math
import os
from datetime import date
from functools import partial

import torch
import torch.nn.functional as F

from raycl.bench.loss import unavoidable_work
from raycl.bench.measure import (
    best_time,
    cpu_model,
    in_fresh_process,
    peak_memory,
    publish,
    serve_worker,
    time_and_peak,
)
from raycl.losses import build_loss
from raycl.losses.tiled import default_block_size, tile_grid

FAMILIES = ("clip", "siglip")
IMPLS = ("open_clip", "materialised", "tiled")


def _features(pairs: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(2, pairs, dim, generator=g)
    return image.requires_grad_(True), text.requires_grad_(True)


def _step(family: str, impl: str):
    """Forward + backward of one batch of pairs: ``step(image, text)``."""
    if impl == "open_clip":
        from open_clip.loss import ClipLoss, SigLipLoss

        scale = torch.tensor(math.log(10.0), requires_grad=True)
        bias = torch.tensor(-10.0, requires_grad=True)

        def reference(image: torch.Tensor, text: torch.Tensor) -> None:
            features = F.normalize(image, dim=1), F.normalize(text, dim=1)
            if family == "clip":
                ClipLoss()(*features, scale.exp()).backward()
            else:
                SigLipLoss()(*features, scale.exp(), bias).backward()

        return reference
    loss = build_loss(family, impl=impl)
    head = loss.logit_head()

    def ours(image: torch.Tensor, text: torch.Tensor) -> None:
        loss(head(image, text).transpose(0, 1)).total.backward()

    return ours


def measure_pairs(
    family: str, impl: str, pairs: int, dim: int, repeats: int = 1, warmup: int = 256
) -> dict:
    """Seconds (best of ``repeats``) and peak bytes of one forward + backward, in this process."""
    step = _step(family, impl)
    step(*_features(warmup, dim))
    image, text = _features(pairs, dim)
    timing: dict[str, float] = {}

    def timed() -> None:
        timing["seconds"] = best_time(lambda: step(image, text), torch.device("cpu"), repeats)

    return {"peak_bytes": peak_memory(timed, torch.device("cpu")), **timing}


def measure_limit(pairs: int, dim: int, repeats: int = 1) -> dict:
    """Seconds of the image×text tiles' forward GEMM, ``exp`` and two backward GEMMs
    (:func:`raycl.bench.loss.unavoidable_work` over every tile of the N×N block)."""
    block = default_block_size(torch.device("cpu"))
    image, text = (t.detach() for t in _features(pairs, dim))
    warm = min(pairs, 2 * block)
    unavoidable_work(image, text, tile_grid(warm, warm, block, symmetric=False))
    tiles = tile_grid(pairs, pairs, block, symmetric=False)
    seconds = best_time(lambda: unavoidable_work(image, text, tiles), torch.device("cpu"), repeats)
    return {"seconds": seconds}


def _fresh(kind: str, env: dict[str, str] | None = None, **kwargs: object) -> dict:
    return in_fresh_process("raycl.bench.pairs", kind, env=env, **kwargs)


def run(args: argparse.Namespace) -> list[dict]:
    from rich.progress import track

    rows = []
    jobs = [(family, n) for family in args.families for n in args.sizes]
    limits: dict[int, float] = {}
    for family, n in track(jobs, description="bench pairs"):
        common = {"family": family, "pairs": n, "dim": args.dim, "repeats": args.repeats}
        if n not in limits:
            limits[n] = _fresh("limit", pairs=n, dim=args.dim, repeats=args.repeats).get("seconds")
        measured = {}
        for impl in IMPLS:
            if impl != "tiled" and n > args.max_baseline:
                measured[impl] = {"error": f"not run (N > --max-baseline {args.max_baseline})"}
                continue
            measured[impl] = time_and_peak(partial(_fresh, "pairs"), impl=impl, **common)
        rows.append({"family": family, "N": n, "limit": limits[n], **measured})
    return rows


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _per_pair(rows: list[dict], family: str) -> tuple[float, float] | None:
    """(bytes per pair, intercept) of the tiled peak between the two largest sizes (where the
    tiles' fixed block² buffers are the same and drop out)."""
    points = sorted((r["N"], r["tiled"]["peak_bytes"]) for r in rows if r["family"] == family
                    and "peak_bytes" in r["tiled"])  # fmt: skip
    if len(points) < 2:
        return None
    (n0, p0), (n1, p1) = points[-2], points[-1]
    slope = (p1 - p0) / (n1 - n0)
    return slope, p0 - slope * n0


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Date {date.today()}; machine: {cpu_model()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; CPU float32; d = {args.dim}; forward + backward through "
        "the logit head (learnable scale, and SigLIP's bias); every time the best of "
        f"{args.repeats} runs in a fresh process, each peak (above the process baseline) from "
        "one more process with glibc's mmap threshold fixed. Limit: the N×N image×text tiles' "
        "forward GEMM, one exp and two backward GEMMs (the exact loss's unavoidable work).",
        "",
    ]
    for family in args.families:
        lines += [
            f"### {family}",
            "",
            "| N pairs | open_clip s | materialised s | tiled s | tiled vs open_clip "
            "| open_clip peak GB | materialised peak GB | tiled peak GB | limit s "
            "| tiled / limit |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in rows if r["family"] == family):
            cells = []
            for impl in IMPLS:
                cells.append(f"{row[impl]['seconds']:.2f}" if "seconds" in row[impl] else
                             row[impl].get("error", ""))  # fmt: skip
            tiled, base = row["tiled"], row["open_clip"]
            speed = f"{base['seconds'] / tiled['seconds']:.2f}×" if "seconds" in base else ""
            peaks = [_gb(row[i]["peak_bytes"]) if "peak_bytes" in row[i] else "" for i in IMPLS]
            limit = row["limit"]
            ratio = f"{tiled['seconds'] / limit:.2f}" if limit and "seconds" in tiled else ""
            lines.append(
                f"| {row['N']:,} | {' | '.join(cells)} | {speed} | {' | '.join(peaks)} "
                f"| {limit:.2f} | {ratio} |"
            )
        fit = _per_pair(rows, family)
        if fit:
            slope, intercept = fit
            big = args.extrapolate
            lines += [
                "",
                f"Tiled peak: {slope:,.0f} bytes per pair ({slope / (2 * 4 * args.dim):.2f} "
                f"float32 copies of the pair's two d-vectors) + {_gb(intercept)} GB; at "
                f"{big:,} pairs that is {_gb(slope * big + intercept)} GB (computed from the "
                f"slope, not run: a CPU would take hours), the materialised N×N matrices "
                f"{_gb(4 * 4 * big * big)} GB.",
            ]
        lines.append("")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    publish("pairs", table(run(args), args), args.output)


if __name__ == "__main__":
    serve_worker({"pairs": measure_pairs, "limit": measure_limit})
