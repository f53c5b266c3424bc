"""The house progress bar: what ``raycl train`` shows over its epochs and ``raycl tune`` over
its budget, built in one place so both look the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress


def progress_bar(label: str, unit: str) -> Progress:
    """A rich ``Progress`` (not started) with the house columns: ``label`` in bold, the bar,
    done/total and the ``unit`` counted (``epochs``, ``trials``), time elapsed, then the ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
