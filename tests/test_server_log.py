"""A tab that goes away mid-conversation leaves one INFO line in the server's log, not a traceback;
any other error keeps its traceback (``ui.server_log``)."""

from __future__ import annotations

import logging

import pytest
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from ui import server_log


@pytest.fixture
def logged(caplog):
    server_log.install()
    server_log.install()  # twice: still one filter
    for name in server_log.LOGGERS:
        assert sum(isinstance(f, server_log.TabGoneFilter) for f in logging.getLogger(name).filters) == 1
    caplog.set_level(logging.INFO)
    return caplog


@pytest.mark.parametrize("logger", server_log.LOGGERS)
@pytest.mark.parametrize("error", [WebSocketDisconnected("Cannot call \"send\" once a close message has been sent."), WebSocketDisconnect(1001)])
def test_a_vanished_tab_is_one_info_line(logged, logger, error):
    try:
        raise error
    except Exception:
        logging.getLogger(logger).exception("Exception in ASGI application\n")
    (record,) = [r for r in logged.records if r.name == logger]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == (
        f"A browser tab's connection closed while the server was using it ({type(error).__name__}); nothing was lost."
    )
    assert "Traceback" not in logged.text


def test_an_error_raised_while_handling_a_disconnect_is_still_a_disconnect(logged):
    try:
        try:
            raise WebSocketDisconnected("WebSocket is not connected.")
        except RuntimeError:
            raise TypeError("WebSocket text frames are not supported; connection closed.")
    except TypeError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application\n")
    assert [r.levelno for r in logged.records] == [logging.INFO]


def test_any_other_error_keeps_its_traceback(logged):
    try:
        raise ValueError("a real bug")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application\n")
    (record,) = logged.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in logged.text and "a real bug" in logged.text
