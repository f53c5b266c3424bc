"""``gpu.md``: the markdown report of ``raycl bench gpu`` from its ``results.jsonl`` records.

Every section reads the records of one stage; a measurement that is planned but has no record
(its stage was stopped at its time box, or died) is listed as not run. GB = 10⁹ bytes.
"""

from __future__ import annotations

from typing import Any

GB = 1e9


def report(
    env: dict,
    statuses: list[dict],
    records: list[dict],
    plan: Any,
    peak_limit: float,
    ratio_limit: float,
) -> str:
    """The whole report: header, targets, stages, one section per stage."""
    lines = [f"# raycl on a GPU: `benchmarks/gpu/run.sh`{' --dry-run' if env['dry_run'] else ''}"]
    lines.append("")
    if env["dry_run"]:
        lines += [
            f"**Dry run on {env['device']}: tiny sizes to debug the script. No number here is a "
            "GPU measurement and no target is judged.**",
            "",
        ]
    gpu = env["gpu"]
    if "driver" in env:
        gpu += f" ({env['gpu_memory']}), driver {env['driver']}"
    lines += [
        f"Date {env['date']}; GPU: {gpu}; torch {env['torch']} (CUDA {env['cuda']}); "
        f"Python {env['python']}; CPU {env['cpu']}; device `{env['device']}`.",
        "",
        *_targets(records, plan, peak_limit, ratio_limit, env["dry_run"]),
        "## Stages",
        "",
        "| stage | status | seconds | time box s |",
        "|---|---|---|---|",
        *(
            f"| {s['stage']} | {s['status']} | {s['seconds']:.1f} | {s['budget']} |"
            for s in statuses
        ),
        "",
        *_correctness([r for r in records if r["stage"] == "correctness"], plan),
        *_loss([r for r in records if r["stage"] == "loss"], plan),
        *_train([r for r in records if r["stage"] == "train"], plan),
        *_collectives([r for r in records if r["stage"] == "collectives"]),
    ]
    return "\n".join(lines) + "\n"


def find(records: list[dict], **fields: Any) -> dict | None:
    """The last record with all of ``fields``."""
    hits = [r for r in records if all(r.get(k) == v for k, v in fields.items())]
    return hits[-1] if hits else None


def _targets(records, plan, peak_limit: float, ratio_limit: float, dry_run: bool) -> list[str]:
    size, dtype, dim = max(plan.loss_sizes), plan.dtypes[0], plan.dim
    tiled = find(records, stage="loss", kind="tiled", family="infonce", dtype=dtype, M=size)
    limit = find(records, stage="loss", kind="limit", dtype=dtype, M=size)
    lines = [
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]

    def row(target: str, measured: str, met: bool | None) -> None:
        verdict = {True: "met", False: "not met", None: "not run"}[met]
        lines.append(f"| {target} | {measured} | {'— (dry run)' if dry_run else verdict} |")

    what = f"tiled InfoNCE at M = {size:,} (d = {dim}, {dtype} inputs, fp32 accumulation)"
    done = tiled is not None and "seconds" in tiled
    row(f"{what} completes", _outcome(tiled), done if tiled else None)
    if done:
        peak = tiled["peak_bytes"] + size * dim * (2 if dtype in ("bfloat16", "float16") else 4)
        row(
            f"its peak memory, inputs included, ≤ {peak_limit / GB:g} GB",
            f"{peak / GB:.2f} GB",
            peak <= peak_limit,
        )
        if limit and "seconds" in limit:
            ratio = tiled["seconds"] / limit["seconds"]
            row(
                f"its time ≤ {ratio_limit}× its tile-matmul limit ({limit['seconds']:.2f} s, "
                "same run)",
                f"{ratio:.2f}×",
                ratio <= ratio_limit,
            )
        else:
            row(f"its time ≤ {ratio_limit}× its tile-matmul limit", _outcome(limit), None)
    steps = [r for r in records if r.get("kind") == "resnet18"]
    good = [r for r in steps if "items_per_s" in r]
    if good:
        best = max(good, key=lambda r: r["batch"])
        measured = (
            f"batch {best['batch']:,}: {best['items_per_s']:,.0f} items/s, "
            f"{best['peak_bytes'] / GB:.2f} GB"
        )
    else:
        measured = _outcome(steps[0] if steps else None)
    row(
        f"{plan.step_precision} training step (resnet18, CIFAR stem) works; items/s and memory "
        "recorded",
        measured,
        bool(good) if steps else None,
    )
    return [*lines, ""]


def _outcome(record: dict | None) -> str:
    if record is None:
        return "not run (its stage stopped or died first)"
    if "error" in record:
        return f"error: {record['error']}"
    return f"{record['seconds']:.2f} s"


def _correctness(records: list[dict], plan) -> list[str]:
    lines = ["## 1. Correctness", ""]
    tests = find(records, kind="cuda-tests")
    if tests is None:
        lines.append("`pytest -m cuda`: not run.")
    elif "error" in tests:
        lines.append(f"`pytest -m cuda`: error: {tests['error']}.")
    else:
        lines.append(
            f"`pytest -m cuda`: {tests['passed']} passed, "
            f"{tests['failed']} failed, {tests['skipped']} skipped (log: `cuda-tests.log`)."
        )
    block = plan.check_block or "the device default"
    lines += [
        "",
        f"Tiled and materialised engines against the fp64 loss of the same rounded embeddings "
        f"(M = {plan.check_size:,}, d = {plan.dim}, block {block}); each error divided by its "
        "rounding bound (≤ 1 passes; `raycl/bench/rounding.py` derives the bounds). "
        "|L(ẑ) − L(z)| is what the rounding of the inputs alone changes.",
        "",
        "| family | inputs | loss | value error ÷ bound: tiled, materialised "
        "| gradient error ÷ bound: tiled, materialised | \\|L(ẑ) − L(z)\\| | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r.get("kind") == "engines"):
        if "error" in r:
            lines.append(f"| {r['family']} | {r['dtype']} | error: {r['error']} | | | | failed |")
            continue
        value = ", ".join(
            f"{r[f'{impl}_value_error'] / r['value_bound']:.3f}"
            for impl in ("tiled", "materialised")
        )
        grad = ", ".join(
            f"{r[f'{impl}_grad_error'] / r['grad_bound']:.3f}" for impl in ("tiled", "materialised")
        )
        lines.append(
            f"| {r['family']} | {r['dtype']} | {r['loss']:.5f} | {value} | {grad} "
            f"| {r['input_rounding']:.1e} | {'pass' if r['ok'] else 'FAIL'} |"
        )
    return [*lines, ""]


def _loss(records: list[dict], plan) -> list[str]:
    lines = [
        f"## 2. Loss: forward + backward, d = {plan.dim}",
        "",
        "Time between CUDA events around one call, after an untimed warm-up (wall time on the "
        "CPU); peak = allocator peak above the input embeddings; limit = the tiled engine's "
        "matmuls alone (same tiles, block size and dtype), in the same process.",
        "",
    ]
    planned = find(records, kind="plan")
    jobs = planned["jobs"] if planned else []
    missing = [j for j in jobs if find(records, stage="loss", **j) is None]
    for dtype in plan.dtypes:
        for family in plan.loss_families:
            lines += [
                f"### {family}, {dtype} inputs",
                "",
                "| M | tiled s | limit s | tiled ÷ limit | tiled peak GB | materialised s "
                "| materialised peak GB |",
                "|---|---|---|---|---|---|---|",
            ]
            for size in sorted(plan.loss_sizes):
                keys = {"dtype": dtype, "M": size}
                tiled = find(records, kind="tiled", family=family, **keys)
                limit = find(records, kind="limit", **keys)
                base = find(records, kind="materialised", family=family, **keys)
                ratio = (
                    f"{tiled['seconds'] / limit['seconds']:.2f}"
                    if tiled and limit and "seconds" in tiled and "seconds" in limit
                    else ""
                )
                lines.append(
                    f"| {size:,} | {_seconds(tiled)} | {_seconds(limit)} | {ratio} "
                    f"| {_peak(tiled)} | {_seconds(base, 'does not fit')} | {_peak(base)} |"
                )
            lines.append("")
    if missing:
        lines += [f"Not run (the stage stopped at its time box): {len(missing)} measurements.", ""]
    return lines


def _seconds(record: dict | None, absent: str = "not run") -> str:
    if record is None:
        return absent
    return f"{record['seconds']:.3f}" if "seconds" in record else f"error: {record['error']}"


def _peak(record: dict | None) -> str:
    return f"{record['peak_bytes'] / GB:.2f}" if record and "peak_bytes" in record else ""


def _train(records: list[dict], plan) -> list[str]:
    lines = ["## 3. Training", ""]
    digits = find(records, kind="digits")
    if digits is None:
        lines.append("`run_training` on digits: not run.")
    elif "error" in digits:
        lines.append(f"`run_training` on digits: error: {digits['error']}.")
    else:
        lines.append(
            f"`run_training` on digits (small_cnn, InfoNCE, bf16 autocast, `LocalSession`, no "
            f"Ray): {digits['epochs']} epochs in {digits['seconds']:.1f} s, last loss "
            f"{digits['loss']:.4f}, kNN top-1 {digits['knn_top1']:.1f} %."
        )
    lines += [
        "",
        f"resnet18 (CIFAR stem) + projection head, InfoNCE, AdamW, {plan.step_precision}; "
        "steps of the training loop's epoch function on random 3×32×32 views (2 per item) "
        "resident on the device; peak = allocator peak including model, optimiser state and "
        "batch.",
        "",
        "| batch (items) | train.chunk_size | items/s | s per step | timed steps | peak GB "
        "| loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r.get("kind") == "resnet18"):
        chunk = r.get("chunk_size") or "one pass"
        if "error" in r:
            lines.append(f"| {r['batch']:,} | {chunk} | stopped: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['batch']:,} | {chunk} | {r['items_per_s']:,.0f} | {r['step_seconds']:.3f} "
            f"| {r['steps']} | {r['peak_bytes'] / GB:.2f} | {r['loss']:.4f} |"
        )
    return [*lines, ""]


def _collectives(records: list[dict]) -> list[str]:
    lines = [
        "## 4. Collectives: one-rank process group",
        "",
        "`distributed_loss` through the gather, the count all-reduce and the backward "
        "reduce-scatter, against the plain loss (fp64, 2 views × 96 items, d = 16).",
        "",
        "| backend | family | engine | gathers | max \\|Δ value\\| | max \\|Δ gradient\\| "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            lines.append(
                f"| {r['backend']} | {r['family']} | {r['impl']} | error: {r['error']} "
                "| | | failed |"
            )
            continue
        lines.append(
            f"| {r['backend']} | {r['family']} | {r['impl']} | {r['gathers']} "
            f"| {r['value_diff']:.1e} | {r['grad_diff']:.1e} | {'pass' if r['ok'] else 'FAIL'} |"
        )
    return [*lines, ""]
