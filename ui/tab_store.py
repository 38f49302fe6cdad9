"""What a tab keeps through a reload: its chosen image and worklist, held in the server's memory
under the tab's mark (``ui.state``), for that one tab and user, for a few hours.

Streamlit starts a new session when a tab is reloaded, and uploads live only in the session, so
without this store F5 on a scored worklist gave an empty page. The tab's URL already carries an
unguessable mark (``?uploads=...``) that survives a reload. The store keeps, under that mark, the
session values a tab would lose, and gives them to a new session that presents the mark only when
that session is the same tab come back:

- the session that owns the mark is no longer connected (a reload closes the old websocket; a
  second tab opened on the same URL, or a pasted link, finds the owner still connected and gets
  nothing);
- the same signed-in user (when sign-in is on) and the same browser (the session's XSRF cookie,
  which Streamlit sets per browser, not per tab) as the owner.

Nothing here touches Streamlit: the page glue is in ``ui.state``, and the store is plain Python
so that its rules are tested without a server. Nothing is written to disk.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StoreLimits:
    """How much the store may hold and for how long.

    Attributes:
        max_bytes: every tab's kept values together (file bytes, thumbnails, tables), counted
            roughly; the tabs used least recently are dropped first to make room.
        idle_seconds: a tab's values are dropped when it has not run for this long (a reload
            comes back in seconds; a laptop closed over lunch, within the afternoon).
        wait_for_close_seconds: how long a new session waits for the owner's websocket to close
            before it decides that the owner is another, live tab (on a reload, the old socket's
            close and the new session's first run arrive close together).
        forgotten: how many dropped marks are remembered, with why, to say what was lost.
    """

    max_bytes: int = 512 * 2**20
    idle_seconds: float = 4 * 3600
    wait_for_close_seconds: float = 2.0
    forgotten: int = 1000


RESTORED, OTHER_TAB, DROPPED, UNKNOWN = "restored", "other tab", "dropped", "unknown"


@dataclass(frozen=True)
class Claim:
    """What a new session presenting a mark gets.

    Attributes:
        outcome: ``RESTORED`` (``values`` are the tab's), ``OTHER_TAB`` (the mark is another tab's,
            or another user's or browser's: nothing is given), ``DROPPED`` (the tab's values were
            dropped; ``lost`` says why) or ``UNKNOWN`` (nothing was kept under it).
        values: the session values to put back (empty unless restored).
        lost: plain sentences on what could not be kept (a run stopped by the reload, a store that
            dropped the tab).
    """

    outcome: str
    values: Mapping[str, Any] = field(default_factory=dict)
    lost: tuple[str, ...] = ()


@dataclass
class _Entry:
    owner: str  # the session id that may save under the mark
    user: str | None
    browser: str | None
    values: dict[str, Any]
    size: int
    used: float
    running: tuple[str, tuple[str, ...]] | None = None  # (what to say if stopped, keys not to give back)


def held_bytes(value: Any, _seen: set[int] | None = None) -> int:
    """Roughly how many bytes ``value`` holds: bytes, strings, arrays and tables counted by
    their content, containers and dataclasses by what they hold; one object counted once."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, str):
        return len(value)
    if isinstance(value, np.ndarray):
        return value.nbytes
    pandas = sys.modules.get("pandas")  # a table exists only once pandas is loaded: not imported here (half a second)
    if pandas is not None and isinstance(value, pandas.DataFrame):
        return int(value.memory_usage(index=True, deep=True).sum())
    if isinstance(value, Mapping):
        return 64 + sum(held_bytes(k, seen) + held_bytes(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return 64 + sum(held_bytes(item, seen) for item in value)
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return 64 + sum(held_bytes(getattr(value, name, None), seen) for name in fields)
    return sys.getsizeof(value, 64)


def _copied(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy one level deep: a tab's dicts and sets (its audit records, its verdicts) are mutated
    in place by the session, and a restored session must not share them with the old one."""
    return {key: value.copy() if isinstance(value, (dict, set, list)) else value for key, value in values.items()}


class TabStore:
    """The tabs' kept values, by mark. Safe to use from every session's thread at once."""

    def __init__(self, limits: StoreLimits = StoreLimits(), clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._dropped: OrderedDict[str, tuple[str, str | None, str | None]] = OrderedDict()  # mark -> (why, user, browser)

    # ------------------------------------------------------------------ saving
    def save(self, mark: str, owner: str, user: str | None, browser: str | None, values: Mapping[str, Any]) -> bool:
        """Keeps ``values`` under ``mark`` for the session ``owner``, in place of what it kept before.

        Returns:
            False when the mark belongs to another session now (this one was taken over by a tab
            that came back while this session was away: give this session a new mark), else True
            (also when the values are too large to keep: the mark then remembers that).
        """
        now = self._clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(mark)
            if entry is not None and entry.owner != owner:
                return False
            size = held_bytes(dict(values))
            if size > self.limits.max_bytes:
                self._entries.pop(mark, None)
                self._forget(mark, _too_large(size, self.limits), user, browser)
                return True
            self._dropped.pop(mark, None)
            running = entry.running if entry is not None else None
            self._entries[mark] = _Entry(owner, user, browser, _copied(values), size, now, running)
            self._entries.move_to_end(mark)
            self._make_room(keep=mark)
            return True

    def running(self, mark: str, owner: str, note: str, drop: Iterable[str] = ()) -> None:
        """Notes that the owner started something a reload would stop: a new session that comes
        back before ``finished`` is told ``note`` and does not get the keys ``drop``."""
        with self._lock:
            entry = self._entries.get(mark)
            if entry is not None and entry.owner == owner:
                entry.running = (note, tuple(drop))

    def finished(self, mark: str, owner: str) -> None:
        """Nothing of the owner's is running now (a run that ended, or the owner's next run)."""
        with self._lock:
            entry = self._entries.get(mark)
            if entry is not None and entry.owner == owner:
                entry.running = None

    # ------------------------------------------------------------------ coming back
    def claim(
        self, mark: str, session: str, user: str | None, browser: str | None, alive: Callable[[str], bool],
        sleep: Callable[[float], None] = time.sleep,
    ) -> Claim:
        """What the new session ``session`` presenting ``mark`` may have; on ``RESTORED`` it owns the mark.

        Args:
            alive: whether a session id is still connected (the owner's tab is open).
            sleep: waits between looks at the owner (tests pass a no-op).
        """
        deadline = self._clock() + self.limits.wait_for_close_seconds
        while True:
            with self._lock:
                self._expire(self._clock())
                entry = self._entries.get(mark)
                if entry is None:
                    why = self._dropped.get(mark)
                    if why is None:
                        return Claim(UNKNOWN)
                    reason, owner_user, owner_browser = why
                    if (owner_user, owner_browser) != (user, browser):
                        return Claim(OTHER_TAB)
                    return Claim(DROPPED, lost=(reason,))
                if (entry.user, entry.browser) != (user, browser):
                    return Claim(OTHER_TAB)
                if entry.owner == session or not alive(entry.owner):
                    values = _copied(entry.values)
                    lost = ()
                    if entry.running is not None:
                        note, drop = entry.running
                        lost = (note,)
                        for key in drop:
                            values.pop(key, None)
                        entry.values = _copied(values)
                        entry.running = None
                    entry.owner = session
                    entry.used = self._clock()
                    self._entries.move_to_end(mark)
                    return Claim(RESTORED, values, lost)
                if self._clock() >= deadline:
                    return Claim(OTHER_TAB)
            sleep(0.1)

    # ------------------------------------------------------------------ bounds
    @property
    def held(self) -> int:
        with self._lock:
            return sum(entry.size for entry in self._entries.values())

    def __contains__(self, mark: str) -> bool:
        with self._lock:
            return mark in self._entries

    def _expire(self, now: float) -> None:
        for mark in [mark for mark, entry in self._entries.items() if now - entry.used > self.limits.idle_seconds]:
            entry = self._entries.pop(mark)
            hours = self.limits.idle_seconds / 3600
            self._forget(
                mark,
                f"The chosen image and worklist of this tab were kept for {hours:g} hours after it was last used, "
                "and that time has passed, so they are gone. Upload the files again.",
                entry.user, entry.browser,
            )

    def _make_room(self, keep: str) -> None:
        total = sum(entry.size for entry in self._entries.values())
        for mark in list(self._entries):
            if total <= self.limits.max_bytes:
                break
            if mark == keep:
                continue
            entry = self._entries.pop(mark)
            total -= entry.size
            self._forget(
                mark,
                "The chosen image and worklist of this tab were dropped from the server's memory to make room for "
                "other tabs' work while this tab was away, so they are gone. Upload the files again.",
                entry.user, entry.browser,
            )

    def _forget(self, mark: str, reason: str, user: str | None, browser: str | None) -> None:
        self._dropped[mark] = (reason, user, browser)
        self._dropped.move_to_end(mark)
        while len(self._dropped) > self.limits.forgotten:
            self._dropped.popitem(last=False)


def _too_large(size: int, limits: StoreLimits) -> str:
    return (
        f"The worklist of this tab was too large to keep through a reload ({size / 2**20:.0f} MB; the server keeps "
        f"up to {limits.max_bytes / 2**20:.0f} MB for all tabs), so it is gone. Upload the files again, in smaller "
        "batches if you want them kept through a reload."
    )


def browser_key(xsrf_cookie: str | None) -> str | None:
    """The browser's stable token inside Streamlit's XSRF cookie (``2|mask|masked token|time``,
    the mask new each time the cookie is written), or the cookie itself in another form; None
    without one. The same for every tab of one browser profile, different in another."""
    if not xsrf_cookie:
        return None
    value = xsrf_cookie.strip("\"'")
    parts = value.split("|")
    if len(parts) == 4 and parts[0] == "2":
        try:
            mask, masked = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
        except ValueError:
            return value
        if mask:
            return bytes(byte ^ mask[index % len(mask)] for index, byte in enumerate(masked)).hex()
    return value
