"""Sign-in end to end: `streamlit run app.py` with a real OpenID Connect provider
(``oidc-provider-mock`` on a free localhost port) and Debian's Chromium. One provider and one
server for the module; docs/deployment.md's probe table is what ``tools.access_probes`` observes here."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import pytest

from pneumo_model.audit import AuditTrail
from test_browser import browser  # noqa: F401  (the module's Chromium, skipped or failed as there)
from tools import access_probes as probes
from tools.app_server import REPO_ROOT

pytestmark = [pytest.mark.shipped_model, pytest.mark.browser]
GUIDE = REPO_ROOT / "docs" / "deployment.md"  # the deployment guide, home of the probe table


@pytest.fixture(scope="module")
def provider():
    with probes.identity_provider() as url:
        yield url


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signed_in")


@pytest.fixture(scope="module")
def app_url(browser, provider, folder):  # noqa: F811
    with probes.signed_in_server(folder, provider) as url:
        yield url


@pytest.fixture
def outside():
    """Requests for another host than localhost: aborted, never sent; only the provider's own page asks."""
    asked: list[str] = []
    yield asked
    assert all(url.startswith("https://cdn.jsdelivr.net/npm/@picocss/") for url in asked), asked


def assert_log_clean(log: Path, browser_cookies: list[str]) -> None:
    """Neither a token, nor a secret, nor an identity cookie in the server's log."""
    text = log.read_text()
    assert probes.COOKIE_SECRET not in text and probes.CLIENT_SECRET not in text
    assert not probes.JWT.search(text), probes.JWT.search(text)
    for value in browser_cookies:
        assert value[:24] not in text


def test_readers_see_their_own_verdicts_administrators_all_and_the_export_is_recorded(
    browser, app_url, folder, outside  # noqa: F811
):
    from playwright.sync_api import expect

    cookies = []
    for subject, note in (("reader-1", "ZZ first reader's note"), ("reader-2", "ZZ second reader's note")):
        context, tab = probes.new_tab(browser, outside)
        probes.sign_in(tab, app_url, subject)
        expect(tab.get_by_role("textbox", name="Reviewer (optional)")).to_have_count(0)  # no name to type
        probes.record_verdict(tab, "agree" if subject == "reader-1" else "disagree", note)
        shown = probes.open_trail(tab)
        assert note in shown and len(re.findall("ZZ ", shown)) == 1, shown
        expect(tab.get_by_role("button", name="Download CSV")).to_have_count(0)
        cookies += [cookie["value"] for cookie in context.cookies()]
        context.close()

    context, tab = probes.new_tab(browser, outside)
    probes.sign_in(tab, app_url, "admin-1")
    shown = probes.open_trail(tab)
    assert "ZZ first reader's note" in shown and "ZZ second reader's note" in shown
    assert "Dr Rhea Reader" in shown and "Dr Rob Second" in shown
    with tab.expect_download() as download:
        tab.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    context.close()

    verdicts = {row["reviewer_subject"]: (row["reviewer"], row["verdict"]) for row in rows if row["verdict"]}
    assert verdicts == {"reader-1": ("Dr Rhea Reader", "agree"), "reader-2": ("Dr Rob Second", "disagree")}
    trail = AuditTrail(folder / "audit.sqlite3")
    assert [event["subject"] for event in trail.events("trail_opened")] == ["admin-1"]
    assert [(event["subject"], event["detail"]["rows"]) for event in trail.events("trail_exported")] == [("admin-1", len(rows))]
    assert_log_clean(folder / "streamlit.log", cookies)


def test_the_access_probes_give_the_deployment_guides_results(browser, app_url, folder, tmp_path, outside):  # noqa: F811
    if not probes.NGINX.is_file():  # the deployment guide's proxy rule runs in Debian's nginx (.ci/run installs it)
        message = f"nginx at {probes.NGINX} (apt-get install nginx)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} is missing and REQUIRE_BROWSER=1")
        pytest.skip(f"{message} is missing")
    found = probes.signed_in_probes(browser, app_url, outside) + probes.unconfigured_probes(browser, tmp_path, outside)
    unexpected = [probe for probe in found if not probe.passed]
    assert not unexpected, unexpected
    assert len(found) >= 15
    ended = AuditTrail(folder / "audit.sqlite3").events("signed_out")
    assert [event["subject"] for event in ended] == ["reader-1"]  # the sign-out is on the record
    readme = GUIDE.read_text()
    copy = readme.split("<!-- access_probes:start -->\n")[1].split("\n<!-- access_probes:end -->")[0]
    table = probes.table(found)
    if probes.NETWORK_PROBE not in table:  # a machine with no network address: the table's last row is not probed
        copy = "\n".join(line for line in copy.splitlines() if probes.NETWORK_PROBE not in line)
    assert copy == table, f"docs/deployment.md's probe table differs; replace it with:\n{table}"
    assert_log_clean(folder / "streamlit.log", [])
