"""What ``raycl tune`` shows while it runs: one progress bar with ETA and a line per trial.

A Ray Tune ``Callback`` (it runs in the driver, where Tune's controller runs). The bar
(:func:`raycl.progress.progress_bar`, as ``raycl train``'s) counts the search's budget: epochs
when ``search.budget_epochs`` is set, else trials.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from raycl.progress import progress_bar


class SearchProgress(Callback):
    """A rich progress bar over the budget, and a line per finished trial."""

    def __init__(self, metric: str, budget_trials: int | None, budget_epochs: int | None):
        self.metric = metric
        self.unit = "epochs" if budget_epochs else "trials"
        self.total = budget_epochs or budget_trials
        self.finished = 0
        self._progress: Any = None
        self._task: Any = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        return {**self.__dict__, "_progress": None, "_task": None}

    def setup(self, **info: Any) -> None:
        self._progress = progress_bar("search", self.unit)
        self._task = self._progress.add_task("search", total=self.total)
        self._progress.start()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        if self._progress is not None and self.unit == "epochs":
            self._progress.advance(self._task)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        if self._progress is None:
            return
        if self.unit == "trials":
            self._progress.advance(self._task)
        result = trial.last_result or {}
        value = result.get(self.metric)
        shown = f"{value:.2f}" if isinstance(value, int | float) else "—"
        settings = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in trial.config.items()
            if not k.startswith("raycl_")
        )
        epochs = result.get("training_iteration", 0)
        self._progress.console.print(
            f"trial {self.finished:>3}: {self.metric} {shown} after {epochs} epochs  ({settings})"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        if self._progress is not None:
            self._progress.console.print(f"trial {self.finished:>3}: errored ({trial.trial_id})")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
