"""The access policy (``pneumo_model.access``) applied to a Streamlit run: the gate every page
passes through first (``ui.frame.render`` calls ``gate``), the sign-in and sign-out, and who is
signed in for the audit trail.

Sign-in is Streamlit's own OpenID Connect (``st.login``, ``st.user``, ``st.logout``), configured
in ``.streamlit/secrets.toml`` (``[auth]``, see ``.streamlit/secrets.toml.example``); the roles'
settings are its ``[access]`` section. Nothing here knows which provider it is.
"""

from __future__ import annotations

import logging

import streamlit as st

from pneumo_model import access as policy
from pneumo_model import presentation
from pneumo_model.access import AccessSettings, AccessSettingsError, Identity
from pneumo_model.audit import AuditError

from .markup import plain
from .trail import audit_path, screen_message, trail  # light: the frame runs ``gate`` before every first paint

_log = logging.getLogger(__name__)
_LOGGED_KEY = "access_logged"
# Said on every refused page; the server log has the reason for an administrator.
ASK_ADMIN = "Ask the app's administrator if you think this is wrong."


def _secrets() -> dict:
    try:
        return st.secrets.to_dict()
    except FileNotFoundError:  # no secrets.toml at all: nothing is configured
        return {}


def provider_configured() -> bool:
    """Whether an identity provider is configured (an ``[auth]`` section in the secrets)."""
    return "auth" in _secrets()


def mode() -> str:
    """How the app is served now: ``policy.LOCAL``, ``SIGN_IN`` or ``REFUSED``."""
    return policy.serving_mode(st.get_option("server.address"), provider_configured())


def settings() -> AccessSettings:
    """The ``[access]`` section of the secrets.

    Raises:
        AccessSettingsError: it cannot work.
    """
    return AccessSettings.from_mapping(_secrets().get("access"))


def _log_once(message: str, *args) -> None:
    """One line in the server log per session and message: an administrator sees why a browser
    was refused without a line for every rerun."""
    logged = st.session_state.setdefault(_LOGGED_KEY, set())
    if message not in logged:
        logged.add(message)
        _log.error("Access: " + message, *args)


def _refuse(message: str, sign_in: bool = False, sign_out: bool = False) -> None:
    """The plain refusal, with at most a sign-in or sign-out button, and nothing else: no menu,
    no model, no page; only the intended-use line every page carries."""
    st.error(message, icon=":material/lock:")
    st.caption(presentation.DISCLAIMER)
    if sign_in:
        st.button("Sign in", icon=":material/login:", type="primary", on_click=st.login, key="access_sign_in")
    if sign_out:
        st.button("Sign out", icon=":material/logout:", on_click=sign_out_now, key="access_sign_out")
    st.stop()


@st.cache_resource(show_spinner=False)
def _ended(path: str) -> set[str]:
    """The sign-ins ended by a sign-out (``policy.sign_in_key``), read once per server process
    from the audit trail and added to as users sign out."""
    return {str(event["detail"].get("sign_in")) for event in trail().events("signed_out")}


def _ended_sign_ins() -> set[str]:
    return _ended(str(audit_path()))


def gate(page_title: str) -> Identity | None:
    """Lets the run go on only if this browser may see the page titled ``page_title``; otherwise
    shows a plain refusal and stops the run.

    Returns:
        The signed-in user; None in local mode (no sign-in there).
    """
    served = mode()
    address = st.get_option("server.address")
    if served == policy.REFUSED:
        _log_once(
            "refusing every page: the server is bound to %r, beyond this computer, and no identity provider is "
            "configured ([auth] in .streamlit/secrets.toml). Set server.address = \"localhost\" for one workstation, "
            "or configure sign-in (docs/deployment.md).",
            address or "every interface",
        )
        _refuse(
            "This app is reachable from the network but no sign-in is configured, so it shows nothing. "
            "Its administrator must either serve it on this computer only or set up sign-in through the "
            "hospital's identity provider."
        )
    if served == policy.LOCAL:
        if not policy.request_is_local(dict(st.context.headers)):
            _log_once(
                "refusing a request that came through a proxy or by another host name in local mode (no sign-in); "
                "configure sign-in before putting the app behind a proxy."
            )
            _refuse(
                "This app runs in local mode, for a browser on its own computer only, and this request came "
                "from elsewhere. " + ASK_ADMIN
            )
        return None
    try:
        rules = settings()
    except AccessSettingsError as error:
        _log_once("refusing every page: %s", error)
        _refuse("The app's access settings cannot be used, so nobody can be let in. " + ASK_ADMIN)
    user = st.user.to_dict()
    if not user.get("is_logged_in"):
        _refuse("Pneumonia X-ray review. Sign in with your hospital account to use this app.", sign_in=True)
    try:
        identity = policy.identity_of(user, rules)
    except AccessSettingsError as error:
        _log_once("refusing a sign-in: %s", error)
        _refuse("Your sign-in could not be read. Sign in again.", sign_in=True)
    if policy.sign_in_expired(user, rules):
        _refuse(
            f"Your sign-in is more than {rules.session_hours:g} hours old and has ended. Sign in again.", sign_in=True
        )
    try:
        ended = policy.sign_in_key(user) in _ended_sign_ins()
    except AuditError as error:
        _log_once("refusing a sign-in: the audit trail cannot be read to check sign-outs (%s)", error)
        _refuse("The app cannot check your sign-in now (its audit trail cannot be read). " + ASK_ADMIN)
    if ended:
        _log_once("refused a sign-in that was ended by signing out (subject %s): a copy of its cookie?", identity.subject)
        _refuse("This sign-in was ended when you signed out. Sign in again.", sign_in=True)
    if identity.role is None:
        _log_once("refused subject %s: no role (reader or administrator) in the [access] settings", identity.subject)
        _refuse(
            f"You are signed in as {plain(identity.name)}, but your account has no role in this app (reader or "
            f"administrator). {ASK_ADMIN}",
            sign_out=True,
        )
    if not policy.may_open(page_title, identity.role):
        _refuse(f"The {page_title} page is for administrators. You are signed in as {plain(identity.name)} ({identity.role}).")
    return identity


def current() -> Identity | None:
    """The signed-in user of this run; None in local mode. For a page that ``gate`` let through."""
    if mode() != policy.SIGN_IN:
        return None
    return policy.identity_of(st.user.to_dict(), settings())


def may_see(page_title: str) -> bool:
    """Whether the menu offers the page: every page in local mode, else by the user's role."""
    identity = current()
    return identity is None or policy.may_open(page_title, identity.role)


def sees_whole_trail() -> bool:
    """The whole audit trail and its export: in local mode (one workstation) and for administrators."""
    identity = current()
    return identity is None or policy.sees_whole_trail(identity.role)


def mode_words() -> str:
    """What the banner says about access: local mode, or who is signed in."""
    identity = current()
    if identity is None:
        return "**Local mode** (no sign-in)."
    return f"Signed in as **{plain(identity.name)}** ({identity.role})."


def record_event(kind: str, **detail) -> None:
    """Records an audit event done by the signed-in user (no subject in local mode); a failure is
    said on the page and logged, and the page goes on."""
    identity = current()
    try:
        trail().record_event(kind, subject=identity.subject if identity else None, **detail)
    except AuditError as error:
        st.error(f"This was not recorded in the audit trail. {screen_message(error)}", icon=":material/database:")


def sign_out_now() -> None:
    """Ends the sign-in: recorded in the audit trail (which sign-in, by digest, so a copy of its
    cookie replayed later is refused, even by a restarted server), then Streamlit's sign-out."""
    user = st.user.to_dict()
    if user.get("is_logged_in"):
        key = policy.sign_in_key(user)
        subject = user.get("sub") if isinstance(user.get("sub"), str) else None
        try:
            trail().record_event("signed_out", subject=subject, sign_in=key)
        except AuditError as error:
            _log.error("Access: a sign-out was not recorded in the audit trail (%s); refused in memory only", error)
        try:
            _ended_sign_ins().add(key)
        except AuditError:
            pass  # the trail cannot be read: every sign-in is refused until it can
    st.logout()


def sidebar() -> None:
    """Who is signed in and the sign-out button, under the menu (nothing in local mode)."""
    identity = current()
    if identity is None:
        return
    st.caption(f"Signed in as **{plain(identity.name)}** ({identity.role})")
    st.button("Sign out", icon=":material/logout:", on_click=sign_out_now, key="access_sidebar_sign_out", width="stretch")
