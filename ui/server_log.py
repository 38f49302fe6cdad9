"""The server's log when a browser tab goes away in the middle of a conversation.

A tab closed, reloaded or cut off (a server restart, a laptop lid) while the server sends to it or
reads from it makes Streamlit's websocket code and uvicorn log a traceback ("Error sending websocket
payload", "Exception in ASGI application") for ``WebSocketDisconnected``: nothing is wrong on the
server, and nothing is lost (the session ends as on any disconnect), but an administrator reading the
log sees a crash. ``install`` turns those records into one line at INFO; any other error keeps its
traceback.
"""

from __future__ import annotations

import logging

# The loggers that report a vanished tab with a traceback: uvicorn's websocket protocols and
# Streamlit's websocket sender.
LOGGERS = ("uvicorn.error", "streamlit.web.server.starlette.starlette_websocket")
# Raised by starlette, uvicorn and the websockets library when the other side has gone.
DISCONNECTS = frozenset({"WebSocketDisconnect", "WebSocketDisconnected", "ClientDisconnected", "ConnectionClosed",
                         "ConnectionClosedError", "ConnectionClosedOK"})


def is_disconnect(error: BaseException | None) -> bool:
    """True when ``error``, or an exception it was raised from or during, is a closed connection."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(kind.__name__ in DISCONNECTS for kind in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
    return False


class TabGoneFilter(logging.Filter):
    """Rewrites a record whose exception is a closed connection as one INFO line without traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if is_disconnect(error):
            record.msg = "A browser tab's connection closed while the server was using it (%s); nothing was lost."
            record.args = (type(error).__name__,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install() -> None:
    """Adds the filter to ``LOGGERS`` once per process (the pages call it on every run)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, TabGoneFilter) for existing in logger.filters):
            logger.addFilter(TabGoneFilter())
