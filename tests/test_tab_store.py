"""What a tab keeps through a reload (``ui.tab_store``): given back to the tab come back, never to
another tab, user or browser; bounded in bytes and in time; and what a reload stopped is said."""

from __future__ import annotations

import pytest

from ui.tab_store import DROPPED, OTHER_TAB, RESTORED, UNKNOWN, StoreLimits, TabStore, browser_key, held_bytes


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(**limits) -> tuple[TabStore, Clock]:
    clock = Clock()
    return TabStore(StoreLimits(**limits), clock=clock), clock


def gone(_session: str) -> bool:
    return False


def live(_session: str) -> bool:
    return True


def no_wait(_seconds: float) -> None:
    pass


FILES = (("a.png", b"x" * 1000), ("b.png", b"y" * 2000))


def test_a_reloaded_tab_gets_its_values_back_and_owns_the_mark():
    tabs, _ = store()
    assert tabs.save("m", "old", None, "browser", {"worklist_files": FILES, "audit_verdicts": {1: "agree"}})
    claim = tabs.claim("m", "new", None, "browser", gone, no_wait)
    assert claim.outcome == RESTORED and claim.lost == ()
    assert claim.values["worklist_files"] is FILES  # the same bytes, not copies
    assert claim.values["audit_verdicts"] == {1: "agree"}
    assert not tabs.save("m", "old", None, "browser", {})  # the old session no longer owns it
    assert tabs.save("m", "new", None, "browser", {})


def test_a_restored_dict_is_not_shared_with_the_old_session():
    tabs, _ = store()
    verdicts = {1: "agree"}
    tabs.save("m", "old", None, None, {"audit_verdicts": verdicts})
    verdicts[2] = "disagree"  # the old session goes on mutating its own dict
    claim = tabs.claim("m", "new", None, None, gone, no_wait)
    assert claim.values["audit_verdicts"] == {1: "agree"}


def test_a_second_tab_with_a_live_owner_gets_nothing_after_waiting_for_a_close():
    tabs, clock = store(wait_for_close_seconds=2.0)
    tabs.save("m", "owner", None, None, {"worklist_files": FILES})
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        clock.now += seconds

    claim = tabs.claim("m", "second", None, None, live, sleep)
    assert claim.outcome == OTHER_TAB and claim.values == {}
    assert 0 < sum(waits) <= 2.1  # it waited for the owner's close, then gave up
    assert tabs.save("m", "owner", None, None, {"worklist_files": FILES})  # the owner keeps its mark


def test_a_reload_whose_old_socket_closes_while_waiting_is_restored():
    tabs, clock = store()
    tabs.save("m", "old", None, None, {"worklist_files": FILES})
    closed = {"old": False}

    def sleep(seconds):
        clock.now += seconds
        closed["old"] = True  # the old websocket's close arrives a moment later

    claim = tabs.claim("m", "new", None, None, lambda session: not closed[session], sleep)
    assert claim.outcome == RESTORED


@pytest.mark.parametrize("user, browser", [("someone else", "browser"), ("alice", "another browser"), (None, "browser")])
def test_another_user_or_browser_never_gets_a_tabs_values_even_when_its_owner_is_gone(user, browser):
    tabs, _ = store()
    tabs.save("m", "old", "alice", "browser", {"worklist_files": FILES})
    claim = tabs.claim("m", "new", user, browser, gone, no_wait)
    assert claim.outcome == OTHER_TAB and claim.values == {}
    assert tabs.claim("m", "new", "alice", "browser", gone, no_wait).outcome == RESTORED


def test_a_mark_nothing_was_kept_under_is_unknown():
    tabs, _ = store()
    assert tabs.claim("never", "new", None, None, gone, no_wait).outcome == UNKNOWN


def test_an_idle_tab_is_dropped_after_its_time_and_the_tab_is_told_why():
    tabs, clock = store(idle_seconds=3600)
    tabs.save("m", "old", None, None, {"worklist_files": FILES})
    clock.now += 3599
    assert "m" in tabs
    clock.now += 2
    claim = tabs.claim("m", "new", None, None, gone, no_wait)
    assert claim.outcome == DROPPED and "kept for 1 hours after it was last used" in claim.lost[0]
    assert "m" not in tabs and tabs.held == 0
    # ... and another user presenting that mark learns nothing of it
    assert tabs.claim("m", "new", "mallory", None, gone, no_wait).outcome == OTHER_TAB


def test_the_store_is_bounded_in_bytes_and_drops_the_least_recently_used_tab_first():
    tabs, clock = store(max_bytes=10_000)
    for mark in ("first", "second", "third"):
        clock.now += 1
        tabs.save(mark, f"session {mark}", None, None, {"worklist_files": (("f", bytes(4000)),)})
    assert "first" not in tabs and "second" in tabs and "third" in tabs
    assert tabs.held <= 10_000
    claim = tabs.claim("first", "new", None, None, gone, no_wait)
    assert claim.outcome == DROPPED and "to make room for other tabs" in claim.lost[0]


def test_a_worklist_larger_than_the_whole_store_is_not_kept_and_the_tab_is_told_so():
    tabs, _ = store(max_bytes=10_000)
    tabs.save("small", "s", None, None, {"worklist_files": (("f", bytes(1000)),)})
    assert tabs.save("big", "b", None, None, {"worklist_files": (("f", bytes(20_000)),)})
    assert "big" not in tabs and "small" in tabs  # nothing else was dropped for it
    claim = tabs.claim("big", "new", None, None, gone, no_wait)
    assert claim.outcome == DROPPED and "too large to keep through a reload" in claim.lost[0]


def test_work_stopped_by_a_reload_is_said_and_its_request_not_given_back():
    tabs, _ = store()
    tabs.save("m", "old", None, None, {"chosen_image": "image", "lime_request": ("digest", 1000, 50)})
    tabs.running("m", "old", "LIME was stopped", drop=("lime_request",))
    claim = tabs.claim("m", "new", None, None, gone, no_wait)
    assert claim.outcome == RESTORED and claim.lost == ("LIME was stopped",)
    assert "lime_request" not in claim.values and claim.values["chosen_image"] == "image"
    # once said, not said again on the next reload
    assert tabs.claim("m", "newer", None, None, gone, no_wait).lost == ()


def test_work_that_finished_or_a_next_run_clears_the_running_note():
    tabs, _ = store()
    tabs.save("m", "old", None, None, {"lime_request": ("digest", 1000, 50)})
    tabs.running("m", "old", "LIME was stopped", drop=("lime_request",))
    tabs.finished("m", "old")
    tabs.save("m", "old", None, None, {"lime_request": ("digest", 1000, 50)})
    claim = tabs.claim("m", "new", None, None, gone, no_wait)
    assert claim.lost == () and claim.values["lime_request"] == ("digest", 1000, 50)


def test_held_bytes_counts_content_once():
    data = bytes(5000)
    assert 5000 <= held_bytes({"a": data, "b": (("x", data),)}) < 5500


def test_the_browser_key_is_the_xsrf_token_whatever_its_mask():
    token = bytes(range(16))
    masks = (b"\x01\x02\x03\x04", b"\xff\x00\xaa\x55")
    cookies = [
        "2|{}|{}|1700000000".format(mask.hex(), bytes(b ^ mask[i % 4] for i, b in enumerate(token)).hex())
        for mask in masks
    ]
    assert browser_key(cookies[0]) == browser_key(cookies[1]) == token.hex()
    assert browser_key(None) is None and browser_key("") is None
    assert browser_key("plain-token") == "plain-token"
