"""Who may see what: the app's access policy as pure functions, with no Streamlit in them.

Three ways the app can be served (``serving_mode``):

- **local**: bound to this computer's loopback address only and no identity provider configured.
  One reader at their own workstation; no sign-in, and a typed reviewer name as before.
- **sign-in**: an identity provider is configured (an ``[auth]`` section in Streamlit's
  ``secrets.toml``). Every page requires a signed-in user with a role, whatever the bind address,
  so the app bound to 127.0.0.1 behind a reverse proxy is as closed as one bound to the network.
- **refused**: bound beyond loopback (or to every interface, Streamlit's default) with no
  identity provider. No page is served.

Roles come from the identity token's claims through ``AccessSettings`` (settings, never code): a
claim (``groups``, ``roles``...) whose values name the role, or an allow-list of subjects. An
administrator may do everything a reader may.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .errors import ConfigError

READER = "reader"
ADMINISTRATOR = "administrator"
ROLES = (READER, ADMINISTRATOR)

LOCAL = "local"
SIGN_IN = "sign-in"
REFUSED = "refused"

# Pages by title (ui.frame.PAGES) and the roles that may open them. A page missing here is an
# administrator's only: a page added later stays closed to readers until someone decides.
PAGE_ROLES: Mapping[str, frozenset[str]] = {
    "Review": frozenset(ROLES),
    "Explain": frozenset(ROLES),
    "Crop & rescore": frozenset(ROLES),
    "Worklist": frozenset(ROLES),
    "Audit trail": frozenset(ROLES),  # a reader sees only their own verdicts there
    "Model card": frozenset(ROLES),
    "Site calibration": frozenset({ADMINISTRATOR}),
    "Monitoring": frozenset({ADMINISTRATOR}),
}

_LOOPBACK_NAMES = ("localhost", "localhost.")
# Headers a reverse proxy adds: in local mode their presence means someone put a proxy in front of
# an app that has no sign-in, so it is no longer one reader's own workstation.
FORWARDING_HEADERS = ("x-forwarded-for", "x-forwarded-host", "x-real-ip", "forwarded")


class AccessSettingsError(ConfigError):
    """The access settings (``[access]`` in ``secrets.toml``) cannot work."""


def _names(values, key: str) -> frozenset[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, Iterable) or not all(isinstance(value, str) and value.strip() for value in values):
        raise AccessSettingsError(f"[access] {key} must be a list of non-empty strings, e.g. {key} = [\"name\"].")
    return frozenset(value.strip() for value in values)


@dataclass(frozen=True)
class AccessSettings:
    """How a signed-in user's role is found, and how long a sign-in lasts.

    Attributes:
        role_claim: the identity token's claim that carries group or role names ("groups",
            "roles"); a string or a list of strings in the token.
        reader_values: values of ``role_claim`` that make a reader.
        administrator_values: values of ``role_claim`` that make an administrator.
        reader_subjects: subject ids (the token's ``sub``) that are readers whatever their claims.
        administrator_subjects: subject ids that are administrators whatever their claims.
        session_hours: a sign-in older than this (from the token's ``iat``) must sign in again,
            although Streamlit's own cookie lasts 30 days.
    """

    role_claim: str = "groups"
    reader_values: frozenset[str] = field(default_factory=frozenset)
    administrator_values: frozenset[str] = field(default_factory=frozenset)
    reader_subjects: frozenset[str] = field(default_factory=frozenset)
    administrator_subjects: frozenset[str] = field(default_factory=frozenset)
    session_hours: float = 10.0

    KEYS = ("role_claim", "reader_values", "administrator_values", "reader_subjects", "administrator_subjects", "session_hours")

    @classmethod
    def from_mapping(cls, section: Mapping[str, object] | None) -> "AccessSettings":
        """The settings from the ``[access]`` section of ``secrets.toml`` (None: the defaults,
        under which nobody has a role).

        Raises:
            AccessSettingsError: an unknown key or a value of the wrong kind.
        """
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.KEYS))
        if unknown:
            raise AccessSettingsError(f"Unknown [access] setting(s) {', '.join(unknown)}; known: {', '.join(cls.KEYS)}.")
        claim = section.get("role_claim", cls.role_claim)
        if not isinstance(claim, str) or not claim.strip():
            raise AccessSettingsError("[access] role_claim must name a claim of the identity token, e.g. \"groups\".")
        hours = section.get("session_hours", cls.session_hours)
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= 24 * 30:
            raise AccessSettingsError("[access] session_hours must be a number of hours above 0 and at most 720.")
        return cls(
            role_claim=claim.strip(),
            session_hours=float(hours),
            **{key: _names(section.get(key, ()), key) for key in cls.KEYS[1:5]},
        )


@dataclass(frozen=True)
class Identity:
    """A signed-in user as the app knows them.

    Attributes:
        subject: the identity provider's stable subject id (``sub``): what the audit trail keys on.
        name: the display name for the screen and the trail (``name``, else ``preferred_username``,
            else ``email``, else the subject).
        role: ``READER``, ``ADMINISTRATOR``, or None when the user has no role here.
    """

    subject: str
    name: str
    role: str | None


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to ``address`` (Streamlit's ``server.address``) is reachable only
    from this computer. None or empty is Streamlit's default: every interface, IPv4 and IPv6. A
    Unix socket is taken as not loopback: one is served through a proxy."""
    if not address:
        return False
    address = address.strip()
    if address.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def serving_mode(address: str | None, provider_configured: bool) -> str:
    """``SIGN_IN`` when an identity provider is configured, else ``LOCAL`` on loopback, else ``REFUSED``."""
    if provider_configured:
        return SIGN_IN
    return LOCAL if is_loopback(address) else REFUSED


def request_is_local(headers: Mapping[str, str]) -> bool:
    """Whether a request (its HTTP headers) came straight from a browser on this computer: a
    loopback Host and no proxy's forwarding header. Headers unknown (an empty mapping) pass."""
    lowered = {key.lower(): value for key, value in headers.items()}
    if any(name in lowered for name in FORWARDING_HEADERS):
        return False
    host = lowered.get("host")
    if not host:
        return True
    if host.startswith("["):  # [::1]:8501
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0]
    return is_loopback(name)


def _claim_values(value: object) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, (list, tuple, set, frozenset)):
        return {item for item in value if isinstance(item, str)}
    return set()


def role_of(claims: Mapping[str, object], settings: AccessSettings) -> str | None:
    """The role of a signed-in user from their identity token's ``claims``; administrator wins."""
    subject = claims.get("sub")
    values = _claim_values(claims.get(settings.role_claim))
    if subject in settings.administrator_subjects or values & settings.administrator_values:
        return ADMINISTRATOR
    if subject in settings.reader_subjects or values & settings.reader_values:
        return READER
    return None


def identity_of(claims: Mapping[str, object], settings: AccessSettings) -> Identity:
    """The ``Identity`` in an identity token's claims (``st.user``).

    Raises:
        AccessSettingsError: the claims carry no subject (no OpenID Connect provider omits it).
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise AccessSettingsError("The identity provider's token has no subject (sub); the user cannot be identified.")
    name = next(
        (claims[key].strip() for key in ("name", "preferred_username", "email") if isinstance(claims.get(key), str) and claims[key].strip()),
        subject,
    )
    return Identity(subject=subject.strip(), name=name[:100], role=role_of(claims, settings))


def may_open(page_title: str, role: str | None) -> bool:
    """Whether a user with ``role`` may open the page titled ``page_title``."""
    return role is not None and role in PAGE_ROLES.get(page_title, frozenset({ADMINISTRATOR}))


def sees_whole_trail(role: str | None) -> bool:
    """Administrators see the whole audit trail and export it; readers only their own verdicts."""
    return role == ADMINISTRATOR


def sign_in_expired(claims: Mapping[str, object], settings: AccessSettings, now: datetime | None = None) -> bool:
    """Whether the sign-in these claims come from is older than ``settings.session_hours`` (from
    the token's ``iat``; a token without one counts as expired)."""
    issued = claims.get("iat")
    if isinstance(issued, bool) or not isinstance(issued, (int, float)):
        return True
    now = now or datetime.now(timezone.utc)
    return now.timestamp() - float(issued) > settings.session_hours * 3600


def sign_in_key(claims: Mapping[str, object]) -> str:
    """A digest naming one sign-in (issuer, subject, issue time and nonce of its token): what a
    sign-out revokes, so that a copy of the cookie replayed afterwards is refused."""
    parts = [str(claims.get(key, "")) for key in ("iss", "sub", "iat", "nonce")]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def visible_trail(rows: list[dict], identity: Identity | None) -> list[dict]:
    """The audit trail rows (``AuditTrail.trail``) this user may see: all of them in local mode
    (``identity`` None) and for an administrator; for a reader, only the verdicts they gave
    themselves (matched by subject id, never by the name shown)."""
    if identity is None or sees_whole_trail(identity.role):
        return list(rows)
    return [row for row in rows if row.get("reviewer_subject") == identity.subject]
