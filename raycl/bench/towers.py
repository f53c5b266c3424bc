"""``raycl bench towers``: two-tower training throughput — ``raycl train`` against a plain
PyTorch loop with open_clip's own ``CLIP`` model and ``ClipLoss``, and 1 vs 2 workers.

Both sides train the same towers (open_clip's vision transformer and text transformer, sizes
from the ``model.*`` defaults of ``model=two_tower model.image_tower=vit``) on the same
generated pairs (``data=digit_pairs``: grey digits given to the ViT as three equal channels,
captions tokenised in the loop by open_clip's tokenizer) at the same batch, with AdamW. The
plain loop runs in a fresh process with a torch thread per core; ``raycl train`` runs one Ray
Train worker holding every core, then ``--workers`` workers of one CPU each. Throughput is
pairs per second over the training steps of the last of ``--epochs`` epochs (evaluation
excluded on both sides).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date

from raycl.bench.measure import cpu_model, in_fresh_process, publish, serve_worker
from raycl.config import load_config

TOWERS = ["model=two_tower", "model.image_tower=vit", "loss=clip", "data=digit_pairs"]


def plain_loop(batch: int, steps: int, epochs: int, threads: int) -> dict:
    """Pairs/s of open_clip's CLIP + ClipLoss in a plain loop (the last epoch's steps)."""
    import torch
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg
    from torch.utils.data import DataLoader

    from raycl.data.digit_pairs import DigitPairs
    from raycl.schema import ModelConfig
    from raycl.towers import text_config, tokenizer, vision_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_config(TOWERS).model
    vision = vision_config(config, image_size=8)
    model = CLIP(config.proj_dim, vision, CLIPTextCfg(**text_config(config)))
    assert isinstance(config, ModelConfig)
    tokens_of = tokenizer(config.context_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = ClipLoss()
    loader = DataLoader(DigitPairs("train"), batch_size=batch, shuffle=True, drop_last=True)
    seconds = 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        for step, ((images, captions), _) in enumerate(loader):
            if step == steps:
                break
            image_features, text_features, scale = model(
                images.expand(-1, 3, -1, -1), tokens_of(list(captions))
            )
            loss = loss_fn(image_features, text_features, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)  # open_clip's training loop: ln 100
        seconds = time.perf_counter() - started
    return {"samples_per_s": steps * batch / seconds}


def run(args: argparse.Namespace) -> list[dict]:
    import ray

    from raycl.cluster import connect_ray
    from raycl.runner import train

    cores = os.cpu_count() or 1
    batch = load_config([*TOWERS, *args.overrides]).data.batch_size_per_worker
    plain = in_fresh_process(
        "raycl.bench.towers", "plain", batch=batch, steps=args.steps, epochs=args.epochs,
        threads=cores,
    )  # fmt: skip
    rows = [{"side": f"plain loop, open_clip CLIP + ClipLoss ({cores} threads)", **plain}]
    print(f"plain loop: {plain.get('samples_per_s', 0):.0f} pairs/s", flush=True)
    connect_ray()
    runs = [(1, cores), *((w, 1) for w in args.workers)]
    with tempfile.TemporaryDirectory() as storage:
        for workers, cpus in runs:
            cfg = load_config(
                [
                    *TOWERS,
                    f"cluster.num_workers={workers}",
                    f"cluster.cpus_per_worker={cpus}",
                    f"epochs={args.epochs}",
                    f"max_steps_per_epoch={args.steps}",
                    "eval.linear_probe=false",
                    f"storage_path={storage}",
                    f"name=bench-{workers}-{cpus}",
                    *args.overrides,
                ]
            )
            last = train(cfg).history[-1]
            side = f"raycl train, {workers} worker(s) × {cpus} CPU"
            rows.append({"side": side, "workers": workers, **last})
            print(f"{side}: {last['samples_per_s']:.0f} pairs/s", flush=True)
    ray.shutdown()
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    plain, one_all = rows[0].get("samples_per_s"), rows[1]["samples_per_s"]
    one = next(r["samples_per_s"] for r in rows[2:] if r["workers"] == 1)
    lines = [
        f"Date {date.today()}; machine: {cpu_model()}, {os.cpu_count()} cores; "
        f"{' '.join(TOWERS)} (ViT and text transformer at the model.* defaults), "
        f"{args.steps} steps per epoch, throughput of epoch {args.epochs}; overrides: "
        f"{args.overrides or 'none'}.",
        "",
        "| side | steps | pairs per step | pairs/s | vs plain loop | vs 1 worker × 1 CPU |",
        "|---|---|---|---|---|---|",
        f"| {rows[0]['side']} | {args.steps} | {rows[1]['global_batch'] // rows[1]['workers']} "
        f"| {plain:.0f} | 1.00× | |",
    ]
    for row in rows[1:]:
        rate = row["samples_per_s"]
        vs_one = f"{rate / one:.2f}×" if row is not rows[1] else ""
        lines.append(
            f"| {row['side']} | {row['steps']} | {row['global_batch']} | {rate:.0f} "
            f"| {rate / plain:.2f}× | {vs_one} |"
        )
    lines += ["", f"raycl (1 worker, every core) / plain loop: {one_all / plain:.2f}×."]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    publish("towers", table(run(args), args), args.output)


if __name__ == "__main__":
    serve_worker({"plain": plain_loop})
