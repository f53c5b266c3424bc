"""Bad items: a corrupt image or an undecodable row, reported by where it is stored.

:class:`GuardedDataset` wraps any map-style data set. An item that fails to load raises a
one-line :class:`~raycl.errors.DataError` naming the item and its file or row
(``data.on_bad_item=error``, the default), or is replaced by the next item that loads and
counted (``data.on_bad_item=skip``: one warning per bad item, however often it is met, the
count of replacements in the epoch's ``bad_items`` metric). The count and the set of reported
items live in shared memory, so items loaded in DataLoader worker processes count too.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

from torch.utils.data import Dataset

from raycl.errors import DataError, first_line

ON_BAD_ITEM = ("error", "skip")
# What a failed read or decode raises: PIL (OSError, incl. UnidentifiedImageError and
# truncated files; SyntaxError for broken headers), pyarrow (ArrowInvalid is a ValueError).
LOAD_ERRORS = (OSError, ValueError, SyntaxError)


def item_source(dataset: Any, index: int) -> str:
    """Where item ``index`` is stored: a file (folder data sets), a file and row (Parquet)."""
    if hasattr(dataset, "item_source"):
        return dataset.item_source(index)
    if hasattr(dataset, "samples"):
        return str(dataset.samples[index][0])
    return f"item {index}"


class GuardedDataset(Dataset):
    """``dataset`` with the ``on_bad_item`` policy; other attributes pass through."""

    def __init__(
        self,
        dataset: Dataset,
        on_bad_item: str = "error",
        same_items_as: GuardedDataset | None = None,
    ) -> None:
        if on_bad_item not in ON_BAD_ITEM:
            raise ValueError(f"data.on_bad_item must be one of {list(ON_BAD_ITEM)}")
        self.dataset = dataset
        self.on_bad_item = on_bad_item
        self._skipped = multiprocessing.Value("q", 0)
        # One bit per item, in shared memory: each bad item is reported once, whichever
        # process meets it; a view of the same items (``same_items_as``) shares the bits.
        if same_items_as is not None and len(same_items_as) == len(self):
            self._reported = same_items_as._reported
        else:
            size = len(self) if on_bad_item == "skip" else 0
            self._reported = multiprocessing.Array("B", (size + 7) // 8, lock=False)

    @property
    def skipped(self) -> int:
        """Bad items replaced so far (over every loader process)."""
        return int(self._skipped.value)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "_skipped", "_reported", "on_bad_item"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        size = len(self)
        for attempt in range(size):
            current = (index + attempt) % size
            try:
                return self.dataset[current]
            except LOAD_ERRORS as err:
                where = item_source(self.dataset, current)
                if self.on_bad_item == "error":
                    raise DataError(
                        f"data: bad item {current} ({where}): {first_line(err)}; "
                        "data.on_bad_item=skip skips such items"
                    ) from None
                with self._skipped.get_lock():
                    self._skipped.value += 1
                    byte, bit = divmod(current, 8)
                    first = not self._reported[byte] & (1 << bit)
                    self._reported[byte] |= 1 << bit
                if first:
                    print(f"raycl: skipped bad item {current} ({where})", file=sys.stderr)
        raise DataError("data: no item of the data set could be loaded")
