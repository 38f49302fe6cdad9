"""Starting `streamlit run app.py` on a free localhost port, for browser tests and screenshots."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium as root in a container: no sandbox, no GPU, nothing fetched in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WINDOW = {"width": 1366, "height": 768}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def streamlit_app(
    log_path: Path, audit_db: Path | None = None, startup_timeout: float = 120.0, port: int | None = None
) -> Iterator[str]:
    """Runs the app on a free port (or ``port``) until the block ends; yields its URL (see ``streamlit_server``)."""
    with streamlit_server(log_path, audit_db, startup_timeout, port) as (url, _):
        yield url


@contextlib.contextmanager
def streamlit_server(
    log_path: Path,
    audit_db: Path | None = None,
    startup_timeout: float = 120.0,
    port: int | None = None,
    root: Path = REPO_ROOT,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Runs the app on a free port (or ``port``) until the block ends; yields its URL and its process.

    Args:
        log_path: the server's stdout and stderr go here (read it when a test fails).
        audit_db: the audit trail the app writes (``$PNEUMO_AUDIT_DB``); None keeps the caller's setting.
        startup_timeout: seconds to wait for the health endpoint.
        port: the port to listen on (a restarted server keeps its port); None picks a free one.
        root: the checkout whose app is served (a benchmark serves an older commit beside this one).

    Raises:
        RuntimeError: the server exited or did not become healthy in time.
    """
    port = free_port() if port is None else port
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if audit_db is not None:
        environment["PNEUMO_AUDIT_DB"] = str(audit_db)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=environment)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"streamlit exited with code {server.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"streamlit did not answer on {url} within {startup_timeout:.0f} s; see {log_path}"
                    )
                time.sleep(0.5)
            yield url, server
        finally:
            stop(server)


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """A temporary worktree of commit ``ref``, removed afterwards: a benchmark serves an older app
    beside this one (``streamlit_server(root=...)``) to compare in the same run."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="app_checkout_"))
    subprocess.run(["git", "worktree", "add", "--detach", str(folder / "app"), ref], cwd=REPO_ROOT, check=True, capture_output=True)
    try:
        yield folder / "app"
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder / "app")], cwd=REPO_ROOT, check=False, capture_output=True)


def stop(process: subprocess.Popen) -> None:
    """Ends a server process: SIGTERM, then SIGKILL after 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
