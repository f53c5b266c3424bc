"""``raycl analyze``: read Tune experiments through Ray's result API and report on them.

Experiments are loaded with ``ray.tune.ExperimentAnalysis`` (local paths or any pyarrow
filesystem URI such as ``s3://...``), never by parsing Tune's files by hand. Outputs: a table
of the top trials, one Parquet table with every trial's config and per-epoch metrics, and PNG
plots: best-so-far against trials and epochs per experiment, the metric over two balance
parameters, and the positive/entropy terms and their gradient norms for the best trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from raycl.config import SEARCH_MARKER

HIDDEN_CONFIG_KEYS = {SEARCH_MARKER}
TERM_COLUMNS = ("loss_pos", "loss_ent", "grad_norm_pos", "grad_norm_ent")


@dataclass
class Experiment:
    """One Tune experiment: its name, trials table and per-epoch history."""

    name: str
    trials: pd.DataFrame  # one row per trial
    epochs: pd.DataFrame  # one row per (trial, reported epoch)
    searched: list[str]  # config keys that vary between trials


def load(path: str, metric: str, mode: str = "max") -> Experiment:
    """Load the experiment at ``path`` (one-line ``FileNotFoundError`` if there is none)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(path, default_metric=metric, default_mode=mode)
    except (ValueError, FileNotFoundError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"no Tune experiment at {path}: {first}") from None
    name = Path(str(path).rstrip("/")).name
    rows, histories = [], []
    frames = analysis.trial_dataframes
    for trial in analysis.trials:
        config = {k: v for k, v in trial.config.items() if k not in HIDDEN_CONFIG_KEYS}
        frame = frames.get(trial.trial_id, pd.DataFrame())
        values = frame[metric] if metric in frame else pd.Series(dtype=float)
        best = values.max() if mode == "max" else values.min()
        rows.append(
            {
                "experiment": name,
                "trial_id": trial.trial_id,
                "status": trial.status,
                **{f"config/{k}": v for k, v in config.items()},
                f"final_{metric}": float(values.iloc[-1]) if len(values) else math.nan,
                f"best_{metric}": float(best) if len(values) else math.nan,
                "epochs": len(frame),
                "error": trial.status == "ERROR",
            }
        )
        if not frame.empty:
            history = frame.assign(experiment=name, trial_id=trial.trial_id, status=trial.status)
            for k, v in config.items():
                history[f"config/{k}"] = v
            histories.append(history)
    trials = pd.DataFrame(rows)
    epochs = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    config_columns = [c for c in trials.columns if c.startswith("config/")]
    searched = [c[len("config/") :] for c in config_columns if trials[c].nunique() > 1]
    return Experiment(name, trials, epochs, searched)


def top_table(experiment: Experiment, metric: str, mode: str, top: int, sort: str | None):
    """A rich table of the ``top`` trials sorted by ``sort`` (default: the final metric)."""
    from rich.table import Table

    column = sort or f"final_{metric}"
    if column not in experiment.trials:
        allowed = ", ".join(experiment.trials.columns)
        raise ValueError(f"--sort: no column {column!r}; allowed: {allowed}")
    ordered = experiment.trials.sort_values(column, ascending=(mode == "min"), na_position="last")
    shown = ["trial_id", "status", *[f"config/{k}" for k in experiment.searched]]
    shown += [f"final_{metric}", f"best_{metric}", "epochs"]
    table = Table(title=f"{experiment.name}: top {min(top, len(ordered))} of {len(ordered)} trials")
    for name in shown:
        table.add_column(name.removeprefix("config/"), justify="right")
    for _, row in ordered.head(top).iterrows():
        table.add_row(*(_fmt(row[c]) for c in shown))
    return table


def _fmt(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def export_parquet(experiments: list[Experiment], path: str) -> None:
    """Every trial's config and per-epoch metrics as one typed Parquet table (pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = [e.epochs for e in experiments if not e.epochs.empty]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for column in table.columns:  # mixed-type columns (e.g. nested dicts) become strings
        if table[column].dtype == object and not table[column].map(_is_scalar).all():
            table[column] = table[column].map(lambda v: None if v is None else str(v))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(pa.Table.from_pandas(table.convert_dtypes(), preserve_index=False), tmp)
    tmp.replace(out)  # never a half-written result


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def finish_order(experiment: Experiment, metric: str) -> pd.DataFrame:
    """Finished trials in the order they ended, with their final metric and cumulative epochs."""
    if experiment.epochs.empty:
        return pd.DataFrame(columns=["metric", "epochs", "trial"])
    last = experiment.epochs.groupby("trial_id").agg(
        end=("timestamp", "max"), metric=(metric, "last"), n=("training_iteration", "max")
    )
    last = last.sort_values("end")
    return pd.DataFrame(
        {
            "metric": last["metric"].values,
            "epochs": last["n"].cumsum().values,
            "trial": range(1, len(last) + 1),
        }
    )


def plot(experiments: list[Experiment], metric: str, mode: str, directory: str) -> list[Path]:
    """PNG plots a user would otherwise draw by hand; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    better = max if mode == "max" else min
    paths = []

    fig, (by_trial, by_epoch) = plt.subplots(1, 2, figsize=(11, 4.2))
    for experiment in experiments:
        order = finish_order(experiment, metric)
        if order.empty:
            continue
        best = order["metric"].cummax() if mode == "max" else order["metric"].cummin()
        by_trial.step(order["trial"], best, where="post", label=experiment.name)
        by_epoch.step(order["epochs"], best, where="post", label=experiment.name)
    for ax, xlabel in ((by_trial, "trials finished"), (by_epoch, "epochs trained")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"best {metric} so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out / "best_so_far.png", plt))

    pooled = pd.concat([e.trials for e in experiments], ignore_index=True)
    searched = sorted({k for e in experiments for k in e.searched})
    if len(searched) >= 2:
        x, y = (f"config/{k}" for k in searched[:2])
        data = pooled.dropna(subset=[f"final_{metric}"])
        fig, ax = plt.subplots(figsize=(6, 5))
        points = ax.scatter(data[x], data[y], c=data[f"final_{metric}"], cmap="viridis", s=40)
        for axis, setter in ((data[x], ax.set_xscale), (data[y], ax.set_yscale)):
            if (axis > 0).all() and axis.max() / axis.min() > 8:
                setter("log", base=2)
        ax.set_xlabel(searched[0])
        ax.set_ylabel(searched[1])
        ax.set_title(f"{metric} over the balance parameters")
        fig.colorbar(points, label=metric)
        fig.tight_layout()
        paths.append(_save(fig, out / "landscape.png", plt))

    finished = pooled.dropna(subset=[f"final_{metric}"])
    if not finished.empty:
        best_row = finished.loc[
            finished[f"final_{metric}"].idxmax()
            if better is max
            else finished[f"final_{metric}"].idxmin()
        ]
        epochs = pd.concat([e.epochs for e in experiments if not e.epochs.empty])
        history = epochs[epochs["trial_id"] == best_row["trial_id"]]
        present = [c for c in TERM_COLUMNS if c in history]
        if present:
            fig, (terms, norms) = plt.subplots(1, 2, figsize=(11, 4.2))
            for column in present:
                ax = terms if column.startswith("loss") else norms
                ax.plot(history["training_iteration"], history[column], marker="o", label=column)
            terms.set_title("positive vs entropy term")
            norms.set_title("gradient norm of each term (balance diagnostic)")
            for ax in (terms, norms):
                ax.set_xlabel("epoch")
                ax.grid(alpha=0.3)
                ax.legend()
            fig.suptitle(f"best trial {best_row['trial_id']} ({best_row['experiment']})")
            fig.tight_layout()
            paths.append(_save(fig, out / "best_trial_terms.png", plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def analyze(
    paths: list[str],
    metric: str = "knn_top1",
    mode: str = "max",
    top: int = 10,
    sort: str | None = None,
    export: str | None = None,
    plots: str | None = None,
) -> list[Experiment]:
    """Load every experiment, print its top trials, then export and plot as asked."""
    from rich.console import Console

    console = Console()
    experiments = [load(p, metric, mode) for p in paths]
    for experiment in experiments:
        console.print(top_table(experiment, metric, mode, top, sort))
        errored = int(experiment.trials["error"].sum()) if not experiment.trials.empty else 0
        if errored:
            console.print(f"[yellow]{experiment.name}: {errored} trial(s) errored[/yellow]")
    if export:
        export_parquet(experiments, export)
        console.print(f"wrote {export}")
    if plots:
        for path in plot(experiments, metric, mode, plots):
            console.print(f"wrote {path}")
    return experiments
