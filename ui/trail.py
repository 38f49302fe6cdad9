"""The app's audit trail as a server resource: where it is, opened once per server process, and
its errors in words for the screen.

Its own module, light (no pandas), so that both the gate (``ui.access``, run before every page's
first paint) and the results' recording (``ui.audit``) take it without importing each other.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import streamlit as st

from pneumo_model.audit import AuditError, AuditTrail
from pneumo_model.paths import REPO_ROOT

AUDIT_DB_ENV = "PNEUMO_AUDIT_DB"
DEFAULT_AUDIT_DB = REPO_ROOT / "audit" / "audit.sqlite3"
# A busy database makes a page wait at most this long before saying the record failed.
BUSY_TIMEOUT_S = 5.0
# What the screen says instead of the database's location: a server path tells a reader nothing
# and tells anyone else where the records are. The server log keeps the whole message.
SERVER_FILE = "on the server"
_log = logging.getLogger(__name__)


def audit_path() -> Path:
    """``$PNEUMO_AUDIT_DB`` if set, else ``audit/audit.sqlite3`` in the repository."""
    return Path(os.environ.get(AUDIT_DB_ENV) or DEFAULT_AUDIT_DB).resolve()


@st.cache_resource(show_spinner=False)
def _open(path: str) -> AuditTrail:
    return AuditTrail(Path(path), busy_timeout_s=BUSY_TIMEOUT_S)


def trail() -> AuditTrail:
    """The app's audit trail (``audit_path``).

    Raises:
        AuditError: it cannot be opened.
    """
    return _open(str(audit_path()))


def screen_message(error: AuditError) -> str:
    """The error's words for the screen, with the audit file's location replaced by "on the server"
    (the whole message goes to the server log, for an administrator)."""
    _log.warning("Audit trail: %s", error)
    path = audit_path()
    return str(error).replace(str(path), SERVER_FILE).replace(str(path.parent), SERVER_FILE)
