"""A process-wide cache bounded by the bytes it holds, not only by how many entries.

``st.cache_data`` bounds a cache by entries and time only, pickles every value on each hit and
hashes its arguments (a 50 MB upload's bytes) on every call; a few full-size 16-bit films would
then hold hundreds of MB. This cache is keyed on small keys (an image's SHA-256 and settings),
returns the stored value itself, made read-only so that no session can change what another one
sees, and drops the least recently used entries once the bytes held pass the budget.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import numpy as np

T = TypeVar("T")
# What a value costs beyond the arrays in it (a dataclass of numbers and short strings).
_OBJECT_BYTES = 1024


def held_bytes(value: object) -> int:
    """The bytes a value holds: its numpy arrays in full, plus a small allowance per object."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, (tuple, list)):
        return _OBJECT_BYTES + sum(held_bytes(item) for item in value)
    if isinstance(value, dict):
        return _OBJECT_BYTES + sum(held_bytes(item) for item in value.values())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _OBJECT_BYTES + sum(held_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return _OBJECT_BYTES


def _freeze(value: object) -> None:
    """Makes the numpy arrays in a value read-only (in place: they now belong to the cache)."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, (tuple, list)):
        for item in value:
            _freeze(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _freeze(getattr(value, f.name))


class ByteBudgetCache:
    """Least-recently-used cache that holds at most ``max_bytes`` (by ``held_bytes``).

    Thread-safe: Streamlit runs each session's script in its own thread. Two sessions asking for
    the same missing key at once may both compute it; the values are equal, one is kept.

    Args:
        max_bytes: the budget; a value larger than it is returned but never stored.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive; got {max_bytes}.")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._held

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value stored under ``key``, or ``compute()``'s, stored if it fits.

        An exception from ``compute`` propagates and nothing is stored, so a failed input is
        tried again next time (its error is cheap: decoding stops at the header).
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]  # type: ignore[return-value]
        value = compute()
        size = held_bytes(value)
        _freeze(value)
        if size > self.max_bytes:
            return value
        with self._lock:
            if key in self._entries:  # another session stored it meanwhile
                self._held -= self._entries.pop(key)[1]
            self._entries[key] = (value, size)
            self._held += size
            while self._held > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._held -= dropped
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._held = 0
