"""Access-control probes against the real server: `streamlit run app.py` signed in through a real
OpenID Connect provider (``oidc-provider-mock``, on a free localhost port), driven by Debian's
Chromium; every result below is observed, never typed.

Usage: ``.venv/bin/python -m tools.access_probes`` prints the probe table of docs/deployment.md
(``tests/test_access_browser.py`` runs the same probes and checks that copy). Nothing is
written to the repository's ``.streamlit/``: the server reads a temporary ``secrets.toml``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.app_server import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, WINDOW, free_port, stop

SLOW_MS = 180_000
COOKIE_SECRET = "probe-cookie-secret-" + "k" * 24
CLIENT_SECRET = "probe-client-secret-" + "s" * 12
READER_GROUP, ADMIN_GROUP = "pneumo-readers", "pneumo-admins"
# Subjects of the provider's predefined users, with their claims in the identity token.
USERS = {
    "reader-1": {"name": "Dr Rhea Reader", "groups": [READER_GROUP]},
    "reader-2": {"name": "Dr Rob Second", "groups": [READER_GROUP]},
    "admin-1": {"name": "Dr Ada Admin", "groups": [ADMIN_GROUP]},
    "nurse-1": {"name": "Nurse Nia", "groups": ["ward-nurses"]},
}
PAGE_PATHS = {  # page title -> its URL path (Streamlit names a pages/ script's URL by its file)
    "Review": "", "Explain": "explain", "Crop & rescore": "crop", "Worklist": "worklist", "Audit trail": "trail",
    "Model card": "model_card", "Site calibration": "site",
}
SIGN_IN_ASKED = "Sign in with your hospital account"
OPEN_IN_STREAMLIT = "served by Streamlit itself; the deployment guide's nginx rule closes it (probes 24-26)"
NGINX = Path("/usr/sbin/nginx")  # Debian's nginx package
NETWORK_PROBE = "the quick start's server on this machine's network address"
JWT = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.")


@contextlib.contextmanager
def identity_provider() -> Iterator[str]:
    """A real OpenID Connect provider on a free localhost port, with ``USERS``; yields its URL."""
    from oidc_provider_mock import User, run_server_in_thread

    users = [User(sub=sub, claims=claims) for sub, claims in USERS.items()]
    with run_server_in_thread(port=free_port(), user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


def write_secrets(folder: Path, provider_url: str, port: int, session_hours: float = 10) -> Path:
    """A ``secrets.toml`` as ``.streamlit/secrets.toml.example`` has it, pointing at ``provider_url``."""
    path = folder / "secrets.toml"
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{COOKIE_SECRET}"\n'
        'client_id = "pneumo-review"\n'
        f'client_secret = "{CLIENT_SECRET}"\n'
        f'server_metadata_url = "{provider_url}/.well-known/openid-configuration"\n\n'
        "[access]\n"
        'role_claim = "groups"\n'
        f'reader_values = ["{READER_GROUP}"]\n'
        f'administrator_values = ["{ADMIN_GROUP}"]\n'
        f"session_hours = {session_hours}\n"
    )
    return path


@contextlib.contextmanager
def server(log_path: Path, audit_db: Path, flags: list[str], port: int | None = None) -> Iterator[str]:
    """`streamlit run app.py` with ``flags`` on a free port until the block ends; yields its URL
    (on 127.0.0.1, which every probe's server listens on unless ``flags`` bind it elsewhere)."""
    port = port or free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), *flags]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PNEUMO_AUDIT_DB": str(audit_db)}
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment)
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"streamlit exited with code {process.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"streamlit did not answer on {url}; see {log_path}") from None
                    time.sleep(0.5)
            yield url
        finally:
            stop(process)


@contextlib.contextmanager
def signed_in_server(folder: Path, provider_url: str) -> Iterator[str]:
    """The app with sign-in configured, bound to 127.0.0.1 (as behind a reverse proxy)."""
    port = free_port()
    secrets = write_secrets(folder, provider_url, port)
    flags = ["--server.address", "127.0.0.1", "--secrets.files", str(secrets)]
    with server(folder / "streamlit.log", folder / "audit.sqlite3", flags, port) as url:
        yield url


def new_tab(browser, outside: list[str]):
    """A fresh context (no cookies) and its tab. A request for another host than localhost is
    aborted, never sent, and noted in ``outside`` (the provider's own login page links a stylesheet
    on a CDN: that is the mock's, not the app's)."""
    context = browser.new_context(viewport=WINDOW, accept_downloads=True)
    local = re.compile(r"^https?://(127\.0\.0\.1|localhost)(:\d+)?/")

    def route(request_route):
        if local.match(request_route.request.url):
            request_route.continue_()
        else:
            outside.append(request_route.request.url)
            request_route.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.set_default_timeout(SLOW_MS)
    return context, tab


def sign_in(tab, url: str, subject: str) -> None:
    """Signs ``subject`` in through the provider's page, from the app's own sign-in button."""
    from playwright.sync_api import expect

    tab.goto(url)
    tab.get_by_role("button", name="Sign in").click()
    tab.get_by_role("button", name=subject, exact=True).click()  # the provider's predefined user
    expect(tab).to_have_url(re.compile(re.escape(url) + r"/?$"))
    expect(tab.get_by_text("Signed in as").first).to_be_visible()


def sign_out(tab, url: str) -> None:
    """The sidebar's Sign out, then the provider's end-session page, back to the app."""
    from playwright.sync_api import expect

    tab.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
    tab.get_by_role("button", name="End session").click()
    expect(tab.get_by_text(SIGN_IN_ASKED)).to_be_visible()


def page_shows(tab, url: str, path: str) -> str:
    """Opens ``url/path`` and says what it shows: "refused: <message>" for a refusal with nothing
    else on the page, "served" for the page itself."""
    from playwright.sync_api import expect

    tab.goto(f"{url}/{path}")
    alert_or_page = tab.get_by_test_id("stAlert").or_(tab.get_by_test_id("stHeading")).first
    expect(alert_or_page).to_be_visible()
    time.sleep(0.5)  # a refused run has stopped; a served page goes on drawing
    if tab.get_by_test_id("stSidebar").count() or tab.get_by_test_id("stHeading").count():
        return "served"
    return "refused: " + tab.get_by_test_id("stAlert").first.inner_text().strip()


def http_status(url: str, cookies: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if cookies:
        request.add_header("Cookie", "; ".join(f"{name}={value}" for name, value in cookies.items()))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def guide_proxy_rule() -> str:
    """The nginx rule of the deployment guide (docs/deployment.md), exactly as printed there."""
    text = (REPO_ROOT / "docs" / "deployment.md").read_text()
    return re.search(r"```nginx\n(.*?)\n[ \t]*```", text, re.DOTALL).group(1)


@contextlib.contextmanager
def nginx_front(app_url: str, folder: Path) -> Iterator[str]:
    """Debian's nginx on a free localhost port with the deployment guide's rule in its ``server`` block, the
    rule's upstream pointed at ``app_url``; yields the proxy's URL. The rule is the guide's text:
    what is tested is what the guide tells an administrator to write."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    upstream = app_url.split("://", 1)[1].rstrip("/")
    rule = guide_proxy_rule().replace("127.0.0.1:8501", upstream)
    temp = {name: folder / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\ndaemon off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
        "events { worker_connections 64; }\nhttp {\n  access_log off;\n"
        + "".join(f"  {name}_temp_path {path};\n" for name, path in temp.items())
        + f"  server {{\n    listen 127.0.0.1:{port};\n{rule}\n  }}\n}}\n"
    )
    process = subprocess.Popen([str(NGINX), "-c", str(config), "-p", str(folder)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not connects("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {process.stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


def proxy_probes(url: str, media_path: str, cookies: dict[str, str], folder: Path) -> list["Probe"]:
    """Probes 24-26: the metrics and a shown image's ``/media/`` URL through the deployment guide's nginx rule."""
    if not NGINX.is_file():
        observed = f"not probed: nginx is not installed ({NGINX}; Debian package nginx)"
        return [Probe(what, expected, observed) for what, expected in PROXY_PROBES]
    with nginx_front(url, folder) as proxy:
        observed = [
            str(http_status(f"{proxy}/_stcore/metrics")),
            str(http_status(proxy + media_path)),
            str(http_status(proxy + media_path, cookies)),
        ]
    return [Probe(what, expected, seen) for (what, expected), seen in zip(PROXY_PROBES, observed)]


PROXY_PROBES = (
    ("`/_stcore/metrics` through the deployment guide's nginx rule", "403"),
    ("the shown image's `/media/...` URL through the nginx rule, without any cookie", "403"),
    ("the same URL through the nginx rule, with the reader's sign-in cookie", "200"),
)


def connects(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) == 0


def outward_address() -> str | None:
    """This machine's address on its network (a UDP socket's connect sends no packet), or None."""
    candidates = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        with contextlib.suppress(OSError):
            probe.connect(("10.255.255.255", 1))
            candidates.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    return next((address for address in candidates if not address.startswith(("127.", "0."))), None)


def forged_cookie() -> str:
    """An identity cookie claiming an administrator, signed with a secret that is not the server's."""
    from streamlit.web.server.starlette.starlette_app_utils import create_signed_value

    claims = {"is_logged_in": True, "sub": "admin-1", "name": "Dr Ada Admin", "groups": [ADMIN_GROUP],
              "iat": int(time.time()), "origin": "http://127.0.0.1", "provider": "default"}
    return create_signed_value("not-the-server-secret-" + "z" * 20, "_streamlit_user", json.dumps(claims)).decode()


@dataclass(frozen=True)
class Probe:
    what: str
    expected: str
    observed: str
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.observed.startswith(self.expected)


def signed_in_probes(browser, url: str, outside: list[str]) -> list[Probe]:
    """Every probe against the server with sign-in (see ``signed_in_server``)."""
    from playwright.sync_api import expect

    probes = []
    context, tab = new_tab(browser, outside)
    for title, path in PAGE_PATHS.items():
        probes.append(Probe(f"{title} (`/{path}`) by URL before sign-in", "refused", page_shows(tab, url, path)))
    probes.append(Probe("`/_stcore/metrics` before sign-in", "200", str(http_status(f"{url}/_stcore/metrics")),
                        OPEN_IN_STREAMLIT + " (session counts and cache sizes, no user)"))
    context.add_cookies([{"name": "_streamlit_user", "value": forged_cookie(), "url": url}])
    probes.append(Probe("a forged identity cookie (an administrator's claims signed with another secret)", "refused",
                        page_shows(tab, url, "trail")))
    context.close()

    context, tab = new_tab(browser, outside)
    sign_in(tab, url, "nurse-1")
    for title in ("Review", "Audit trail"):
        probes.append(Probe(f"{title} by URL signed in with no role", "refused", page_shows(tab, url, PAGE_PATHS[title])))
    context.close()

    context, tab = new_tab(browser, outside)
    sign_in(tab, url, "reader-1")
    probes.append(Probe("Site calibration by URL as a reader", "refused", page_shows(tab, url, "site")))
    tab.goto(url)
    tab.get_by_test_id("stSidebar").get_by_role("button").filter(has_text="IM-0003-0001").click()
    image = tab.get_by_test_id("stImage").locator("img").first
    expect(image).to_be_visible()
    media = image.get_attribute("src")
    media_url = media if media.startswith("http") else url + media
    probes.append(Probe("a shown image's `/media/...` URL, fetched without any cookie while the tab shows it", "200",
                        str(http_status(media_url)), OPEN_IN_STREAMLIT + " (an unguessable URL, only while shown)"))
    signed_in_cookies = {c["name"]: c["value"] for c in context.cookies() if c["name"].startswith("_streamlit_user")}
    proxied = proxy_probes(url, media_url[len(url):], signed_in_cookies, Path(tempfile.mkdtemp(prefix="nginx_")))
    tab.goto(f"{url}/trail")
    expect(tab.get_by_text("Your own verdicts")).to_be_visible()
    probes.append(Probe("the audit trail's CSV export as a reader", "no export",
                        "no export" if tab.get_by_role("button", name="Download CSV").count() == 0 else "offered"))
    cookies = {cookie["name"]: cookie["value"] for cookie in context.cookies() if cookie["name"].startswith("_streamlit_user")}
    sign_out(tab, url)
    for title, path in PAGE_PATHS.items():
        probes.append(Probe(f"{title} (`/{path}`) by URL after sign-out", "refused", page_shows(tab, url, path)))
    probes.append(Probe("that image's `/media/...` URL just after sign-out", "200", str(http_status(media_url)),
                        "still served until Streamlit drops the closed session (`server.disconnectedSessionTTL`, "
                        "120 s); the proxy's rule refuses it to a browser without the sign-in cookie (probe 25)"))
    context.close()

    context, tab = new_tab(browser, outside)
    context.add_cookies([{"name": name, "value": value, "url": url} for name, value in cookies.items()])
    probes.append(Probe("the reader's identity cookie replayed after sign-out", "refused", page_shows(tab, url, "")))
    context.close()
    return probes + proxied


def record_verdict(tab, verdict: str, note: str) -> None:
    """Picks the grey-zone demo image on Review and records a verdict on its call."""
    from playwright.sync_api import expect

    tab.get_by_test_id("stSidebar").get_by_role("button").filter(has_text="IM-0003-0001").click()
    expect(tab.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")).to_be_visible()
    tab.get_by_test_id("stRadioGroup").get_by_text(verdict, exact=True).click()
    tab.get_by_role("textbox", name="Note (optional)").fill(note)
    tab.get_by_role("button", name="Record verdict").click()
    expect(tab.get_by_text(f"Verdict {verdict} recorded")).to_be_visible()


def open_trail(tab) -> str:
    """Opens the audit trail from the menu (the same session); returns its table's text."""
    from playwright.sync_api import expect

    tab.get_by_test_id("stSidebar").get_by_role("link", name="Audit trail", exact=True).click()
    grid = tab.locator("[data-testid=stDataFrame] table[role=grid]")
    expect(grid).to_be_attached()
    time.sleep(1.5)  # the grid fills its cells after it appears
    return grid.evaluate("table => table.textContent")


def take(tab, folder: Path | None, name: str) -> None:
    if folder is not None:
        tab.mouse.move(0, 0)
        time.sleep(2)
        tab.screenshot(path=str(folder / f"{name}.png"))


def unconfigured_probes(browser, folder: Path, outside: list[str]) -> list[Probe]:
    """The quick start's binding (the repository's config.toml, no flags), and the app bound to
    every interface without an identity provider."""
    probes = []
    log = folder / "unconfigured.log"
    port = free_port()
    # No --server.address: what .streamlit/config.toml says (the quick start); no secrets at all.
    with server(log, folder / "local.sqlite3", ["--secrets.files", str(folder / "none.toml")], port):
        probes.append(Probe("the quick start's server on 127.0.0.1", "answers",
                            "answers" if connects("127.0.0.1", port) else "no answer"))
        probes.append(Probe("the quick start's server on IPv6 `[::1]`", "no answer",
                            "answers" if connects("::1", port) else "no answer"))
        outward = outward_address()
        network = None if outward is None else Probe(NETWORK_PROBE, "no answer", "answers" if connects(outward, port) else "no answer")
    flags = ["--server.address", "0.0.0.0", "--secrets.files", str(folder / "none.toml")]
    with server(log, folder / "open.sqlite3", flags) as url:
        context, tab = new_tab(browser, outside)
        for title in ("Review", "Audit trail"):
            probes.append(Probe(f"{title} by URL, bound to 0.0.0.0 without an identity provider", "refused",
                                page_shows(tab, url, PAGE_PATHS[title])))
        context.close()
    logged = "logged" if "beyond this computer, and no identity provider is configured" in log.read_text() else "not logged"
    probes.append(Probe("that refusal in the server log", "logged", logged))
    return probes + ([network] if network is not None else [])  # last: a machine without a network address has no such row


def table(probes: list[Probe]) -> str:
    """The probe table of docs/deployment.md."""
    lines = ["| # | probe (real server, real provider, Chromium) | result |", "|---|---|---|"]
    for number, probe in enumerate(probes, 1):
        observed = probe.observed.split(":", 1)[0] if probe.observed.startswith("refused") else probe.observed
        lines.append(f"| {number} | {probe.what} | {observed}{': ' + probe.note if probe.note else ''} |")
    return "\n".join(lines)


def screenshots(browser, url: str, local_url: str, out: Path, outside: list[str]) -> None:
    """The sign-in refusal, the local-mode banner, a reader's and an administrator's audit trail."""
    from playwright.sync_api import expect

    context, tab = new_tab(browser, outside)
    tab.goto(f"{url}/trail")
    expect(tab.get_by_text(SIGN_IN_ASKED)).to_be_visible()
    take(tab, out, "access_sign_in")
    context.close()
    context, tab = new_tab(browser, outside)
    tab.goto(local_url)
    tab.get_by_test_id("stSidebar").get_by_role("button").filter(has_text="IM-0003-0001").click()
    expect(tab.get_by_test_id("stMetric").filter(has_text="Probability of pneumonia")).to_be_visible()
    take(tab, out, "access_local_mode")
    context.close()
    for subject, verdict, note in (("reader-1", "agree", "ZZ right lower lobe clear"), ("reader-2", "disagree", "ZZ left base opacity")):
        context, tab = new_tab(browser, outside)
        sign_in(tab, url, subject)
        record_verdict(tab, verdict, note)
        open_trail(tab)
        if subject == "reader-1":
            take(tab, out, "access_trail_reader")
        context.close()
    context, tab = new_tab(browser, outside)
    sign_in(tab, url, "admin-1")
    open_trail(tab)
    take(tab, out, "access_trail_admin")
    context.close()


def main() -> None:
    import argparse

    from playwright.sync_api import expect, sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshots", type=Path, help="save the access screenshots in this folder instead of probing")
    arguments = parser.parse_args()
    expect.set_options(timeout=SLOW_MS)  # a fresh server's first page loads TensorFlow
    outside: list[str] = []
    with tempfile.TemporaryDirectory() as temporary, identity_provider() as provider, sync_playwright() as playwright:
        folder = Path(temporary)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        if arguments.screenshots:
            flags = ["--server.address", "127.0.0.1", "--secrets.files", str(folder / "none.toml")]
            with signed_in_server(folder, provider) as url, server(folder / "local.log", folder / "local.sqlite3", flags) as local:
                screenshots(browser, url, local, arguments.screenshots, outside)
            browser.close()
            return
        with signed_in_server(folder, provider) as url:
            probes = signed_in_probes(browser, url, outside)
        probes += unconfigured_probes(browser, folder, outside)
        browser.close()
    print(table(probes))
    failed = [probe for probe in probes if not probe.passed]
    for probe in failed:
        print(f"UNEXPECTED: {probe.what}: {probe.observed} (expected {probe.expected})", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
