"""Who may see what: the policy's pure functions (``pneumo_model.access``), and every page run with
``AppTest`` in local mode, bound beyond localhost without sign-in, and signed in (``st.user`` set
by the test) as a reader, an administrator and a user with no role."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from pneumo_model import access
from pneumo_model.access import ADMINISTRATOR, READER, AccessSettings, AccessSettingsError, Identity
from pneumo_model.audit import AuditTrail
from test_app import APP, PAGES, TIMEOUT, pick_sample, texts
from ui import audit, frame

SETTINGS = AccessSettings.from_mapping(
    {"role_claim": "groups", "reader_values": ["pneumo-readers"], "administrator_values": ["pneumo-admins"],
     "administrator_subjects": ["root-7"], "session_hours": 8}
)
SECRETS = {
    "auth": {
        "redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32, "client_id": "pneumo",
        "client_secret": "y" * 16, "server_metadata_url": "http://localhost:1/.well-known/openid-configuration",
    },
    "access": {"role_claim": "groups", "reader_values": ["pneumo-readers"], "administrator_values": ["pneumo-admins"]},
}


def claims(sub: str = "r-1", groups=("pneumo-readers",), **extra) -> dict:
    return {"is_logged_in": True, "iss": "http://idp", "sub": sub, "name": f"Dr {sub}", "groups": list(groups),
            "iat": int(time.time()) - 60, "nonce": "n-" + sub, **extra}


# ----------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("localhost", True), ("127.0.0.1", True), ("127.3.0.9", True), ("::1", True), ("[::1]", True), (None, False),
     ("", False), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("pacs.hospital.example", False),
     ("unix:///run/pneumo.sock", False)],
)
def test_only_loopback_addresses_are_local(address, loopback):
    assert access.is_loopback(address) is loopback
    assert access.serving_mode(address, provider_configured=False) == (access.LOCAL if loopback else access.REFUSED)
    assert access.serving_mode(address, provider_configured=True) == access.SIGN_IN  # behind a proxy on 127.0.0.1 too


def test_a_local_request_has_a_loopback_host_and_no_proxy_header():
    assert access.request_is_local({"Host": "127.0.0.1:8501"})
    assert access.request_is_local({"Host": "localhost:8501"})
    assert access.request_is_local({"Host": "[::1]:8501"})
    assert access.request_is_local({})  # AppTest: no request at all
    assert not access.request_is_local({"Host": "rebind.attacker.example:8501"})
    assert not access.request_is_local({"Host": "127.0.0.1:8501", "X-Forwarded-For": "10.0.0.8"})
    assert not access.request_is_local({"host": "localhost", "forwarded": "for=10.0.0.8"})


def test_roles_from_a_claim_or_an_allow_list_administrator_first():
    assert access.role_of({"sub": "a", "groups": ["pneumo-readers"]}, SETTINGS) == READER
    assert access.role_of({"sub": "a", "groups": "pneumo-admins"}, SETTINGS) == ADMINISTRATOR  # a string claim
    assert access.role_of({"sub": "a", "groups": ["pneumo-readers", "pneumo-admins"]}, SETTINGS) == ADMINISTRATOR
    assert access.role_of({"sub": "root-7"}, SETTINGS) == ADMINISTRATOR
    assert access.role_of({"sub": "a", "groups": ["nurses"]}, SETTINGS) is None
    assert access.role_of({"sub": "a", "roles": ["pneumo-admins"]}, SETTINGS) is None  # another claim than configured
    roles = AccessSettings.from_mapping({"role_claim": "roles", "reader_values": "Reader"})
    assert access.role_of({"sub": "a", "roles": ["Reader"]}, roles) == READER
    assert access.role_of({"sub": "a", "groups": ["pneumo-admins"]}, AccessSettings()) is None  # nobody by default


def test_settings_refuse_what_cannot_work():
    for section in ({"role_claims": "groups"}, {"role_claim": ""}, {"reader_values": [1]}, {"session_hours": 0},
                    {"session_hours": "8"}, {"administrator_subjects": [""]}):
        with pytest.raises(AccessSettingsError):
            AccessSettings.from_mapping(section)


def test_identity_names_by_claim_and_needs_a_subject():
    assert access.identity_of({"sub": "s", "name": "Dr A"}, SETTINGS) == Identity("s", "Dr A", None)
    assert access.identity_of({"sub": "s", "preferred_username": "a.b"}, SETTINGS).name == "a.b"
    assert access.identity_of({"sub": "s", "email": "a@b"}, SETTINGS).name == "a@b"
    assert access.identity_of({"sub": "s"}, SETTINGS).name == "s"
    with pytest.raises(AccessSettingsError):
        access.identity_of({"name": "nobody"}, SETTINGS)


def test_pages_by_role_and_an_unknown_page_is_for_administrators():
    titles = [page.title for page in frame.PAGES]
    assert set(access.PAGE_ROLES) <= set(titles)
    for title in titles:
        assert access.may_open(title, ADMINISTRATOR)
        assert not access.may_open(title, None)
    assert [title for title in titles if not access.may_open(title, READER)] == ["Site calibration", "Monitoring"]
    assert not access.may_open("A page added later", READER) and access.may_open("A page added later", ADMINISTRATOR)


def test_a_sign_in_ends_after_its_hours_and_a_token_without_iat_is_over():
    now = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)
    issued = now.timestamp() - 8 * 3600
    assert not access.sign_in_expired({"iat": issued + 1}, SETTINGS, now)
    assert access.sign_in_expired({"iat": issued - 1}, SETTINGS, now)
    assert access.sign_in_expired({}, SETTINGS, now)


def test_sign_in_key_differs_per_sign_in():
    one = claims()
    assert access.sign_in_key(one) == access.sign_in_key(dict(one))
    assert access.sign_in_key(one) != access.sign_in_key({**one, "nonce": "other"})
    assert access.sign_in_key(one) != access.sign_in_key({**one, "iat": one["iat"] + 1})


def test_a_reader_sees_only_their_own_verdicts():
    rows = [{"result_id": 1, "reviewer_subject": "r-1"}, {"result_id": 1, "reviewer_subject": "r-2"},
            {"result_id": 2, "reviewer_subject": None}]
    assert access.visible_trail(rows, Identity("r-1", "Dr r-1", READER)) == rows[:1]
    assert access.visible_trail(rows, Identity("a-1", "Dr a-1", ADMINISTRATOR)) == rows
    assert access.visible_trail(rows, None) == rows


# ----------------------------------------------------------------------------- the pages (AppTest)


def signed_in(user: dict | None, page: str = "app.py") -> AppTest:
    """A run of ``page`` with an identity provider configured and ``user`` as ``st.user`` (None: not signed in)."""
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    app.secrets.update(SECRETS)
    app.user = user if user is not None else {"is_logged_in": False}
    app.run()
    if page != "app.py":
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def refusal(app: AppTest) -> str:
    """The page's one error, and proof that nothing else is on it: no banner, no menu, no model."""
    assert len(app.error) == 1, texts(app.error)
    assert not app.warning and not app.sidebar.children, "a banner or the sidebar is drawn"
    assert not app.subheader and not app.metric and not app.dataframe
    return texts(app.error)


@pytest.fixture
def bound_to_network():
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", "localhost")


@pytest.mark.parametrize("page", PAGES)
def test_bound_beyond_localhost_without_sign_in_every_page_refuses(bound_to_network, page, caplog):
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    app.run()
    if page != "app.py":
        app.switch_page(page).run()
    assert "no sign-in is configured" in refusal(app)
    assert "bound to '0.0.0.0', beyond this computer" in caplog.text


@pytest.mark.parametrize("page", PAGES)
def test_before_sign_in_every_page_asks_to_sign_in(page):
    app = signed_in(None, page)
    assert "Sign in with your hospital account" in refusal(app)
    assert [button.label for button in app.button] == ["Sign in"]


@pytest.mark.shipped_model
def test_local_mode_says_so_and_keeps_the_reviewer_field():
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert "Local mode" in app.warning[0].value
    pick_sample(app)
    assert [field.label for field in app.text_input] == ["Reviewer (optional)"]


@pytest.mark.shipped_model
def test_a_reader_sees_reader_pages_and_is_refused_site_calibration():
    app = signed_in(claims("r-1"))
    assert "Signed in as **Dr r\\-1** (reader)" in app.warning[0].value
    links = [link.label for link in app.sidebar.get("page_link")]
    assert "Site calibration" not in links and "Audit trail" in links
    app = signed_in(claims("r-1"), "pages/site.py")
    assert refusal(app) == "The Site calibration page is for administrators. You are signed in as Dr r-1 (reader)."


@pytest.mark.shipped_model
def test_an_administrator_opens_site_calibration():
    app = signed_in(claims("a-1", groups=["pneumo-admins"]), "pages/site.py")
    assert not app.error and app.subheader[0].value == "Site calibration"


@pytest.mark.parametrize("page", ["app.py", "pages/trail.py"])
def test_a_user_in_neither_role_is_refused(page):
    app = signed_in(claims("n-1", groups=["nurses"]), page)
    assert "has no role in this app" in refusal(app)
    assert [button.label for button in app.button] == ["Sign out"]


def test_an_old_sign_in_must_sign_in_again():
    app = signed_in(claims("r-1", iat=int(time.time()) - 11 * 3600))  # the default session is 10 hours
    assert "more than 10 hours old" in refusal(app)


def test_a_sign_in_ended_by_sign_out_is_refused(audit_db):
    user = claims("r-1")
    AuditTrail(audit_db).record_event("signed_out", subject="r-1", sign_in=access.sign_in_key(user))
    assert "ended when you signed out" in refusal(signed_in(user))
    assert "ended" not in texts(signed_in({**user, "nonce": "a new sign-in"}).error)


@pytest.mark.shipped_model
def test_the_verdict_carries_the_identity_and_the_reader_sees_only_their_own(audit_db):
    app = signed_in(claims("r-1"))
    pick_sample(app)
    assert not app.text_input, "no reviewer name to type when signed in"
    app.radio(key="review_verdict_verdict").set_value("agree")
    app.button(key=audit.submit_key("review_verdict", app.session_state)).click().run()
    trail = AuditTrail(audit_db)
    (verdict,) = [row for row in trail.trail() if row["verdict"]]
    assert (verdict["reviewer"], verdict["reviewer_subject"]) == ("Dr r-1", "r-1")
    other = trail.record_result(**{key: verdict[key] for key in (
        "image_sha256", "model_sha256", "threshold", "probability", "label", "grey_zone", "source", "operating_point")})
    trail.record_verdict(other, "disagree", note="someone else's note", reviewer="Dr r-2", reviewer_subject="r-2")

    reader = signed_in(claims("r-1"), "pages/trail.py")
    (table,) = reader.dataframe
    assert list(table.value["reviewer"]) == ["Dr r-1"]
    assert "someone else's note" not in table.value.to_string()
    assert not trail.events("trail_opened")  # a reader's own part is not the whole trail

    admin = signed_in(claims("a-1", groups=["pneumo-admins"]), "pages/trail.py")
    (table,) = admin.dataframe
    assert sorted(table.value["reviewer"]) == ["Dr r-1", "Dr r-2"]
    assert [(event["subject"], event["detail"]["rows"]) for event in trail.events("trail_opened")] == [("a-1", 2)]
    admin.toggle(key="trail_technical").set_value(True).run()  # a rerun of the open page is no new opening
    assert len(trail.events("trail_opened")) == 1


def test_the_committed_example_settings_are_complete_and_hold_no_secret():
    import tomllib

    from pneumo_model.paths import REPO_ROOT

    example = tomllib.loads((REPO_ROOT / ".streamlit" / "secrets.toml.example").read_text())
    assert {"redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url"} <= set(example["auth"])
    assert example["auth"]["redirect_uri"].endswith("/oauth2callback") and "expose_tokens" not in example["auth"]
    assert all(example["auth"][key].startswith("REPLACE") for key in ("cookie_secret", "client_id", "client_secret"))
    assert AccessSettings.from_mapping(example["access"]).reader_values == {"pneumo-readers"}
    assert ".streamlit/secrets.toml" in (REPO_ROOT / ".gitignore").read_text().splitlines()
