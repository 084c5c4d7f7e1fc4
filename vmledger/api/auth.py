"""Who is calling: the three auth modes of the Compute API.

- ``noauth``: anyone, as an administrator of the project named in the URL (else
  ``admin``); any ``X-Auth-Token`` (``notused`` from openstacksdk) is accepted.
- ``token``: a fixed set of tokens, each mapped to a user, a project and roles
  (``TOKEN:USER:PROJECT:ROLE1,ROLE2``). A request without a known ``X-Auth-Token`` is a
  401 ``unauthorized`` fault; the ``admin`` role makes an administrator.
- ``keystone``: the same, plus tokens issued by the minimal Keystone v3 endpoint under
  ``/identity/v3`` (:mod:`vmledger.api.identity`) to configured users with passwords
  (``NAME:PASSWORD:PROJECT:ROLES``).

In the token modes the project in a URL must be the token's (400 ``Malformed request
URL`` otherwise, as Nova says), and a project's servers are invisible to other projects.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from starlette.requests import Request

from vmledger.api.faults import ApiError

AUTH_MODES = ("noauth", "token", "keystone")
ADMIN_ROLE = "admin"
DEFAULT_TOKEN_LIFETIME = timedelta(hours=1)
UNAUTHORIZED = "The request you have made requires authentication."


@dataclass(frozen=True)
class Identity:
    """What a token stands for: a user acting in a project with some roles."""

    user_id: str
    project_id: str | None
    roles: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


@dataclass(frozen=True)
class Account:
    """A user the Keystone endpoint authenticates by password, scoped to one project."""

    name: str
    password: str = field(repr=False)
    project_id: str
    roles: tuple[str, ...] = ()

    def identity(self, project_id: str | None) -> Identity:
        return Identity(user_id=self.name, project_id=project_id, roles=self.roles)

    def check_password(self, password: str) -> bool:
        return hmac.compare_digest(self.password.encode(), password.encode())


def _roles(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.strip() for r in text.split(",") if r.strip()))


def parse_token_spec(text: str) -> tuple[str, Identity]:
    """``TOKEN:USER:PROJECT:ROLES`` (roles comma-separated, may be empty) → token, identity.

    The token itself may contain colons; the last three fields are split off the right.
    """
    parts = text.split(":")
    if len(parts) < 4 or not all(parts[-4:-1]) or not ":".join(parts[:-3]):
        raise ValueError(f"expected TOKEN:USER:PROJECT:ROLES, got {text!r}")
    token = ":".join(parts[:-3])
    user, project, roles = parts[-3], parts[-2], parts[-1]
    return token, Identity(user_id=user, project_id=project, roles=_roles(roles))


def parse_user_spec(text: str) -> Account:
    """``NAME:PASSWORD:PROJECT:ROLES`` → an account (the password may contain colons)."""
    parts = text.split(":")
    if len(parts) < 4 or not parts[0] or not parts[-2]:
        raise ValueError(f"expected NAME:PASSWORD:PROJECT:ROLES, got {text!r}")
    password = ":".join(parts[1:-2])
    if not password:
        raise ValueError(f"empty password in {text!r}")
    return Account(name=parts[0], password=password, project_id=parts[-2],
                   roles=_roles(parts[-1]))


class TokenRegistry:
    """Fixed tokens, and the tokens the identity endpoint issues (in memory, expiring)."""

    def __init__(self, fixed: Mapping[str, Identity] | None = None, *,
                 lifetime: timedelta = DEFAULT_TOKEN_LIFETIME,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.fixed = dict(fixed or {})
        self.lifetime = lifetime
        self._now = now
        self._issued: dict[str, tuple[Identity, datetime, datetime]] = {}
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now()

    def issue(self, identity: Identity) -> tuple[str, datetime, datetime]:
        """A new token for ``identity``: (token, issued_at, expires_at)."""
        issued = self._now()
        expires = issued + self.lifetime
        token = "vmlt-" + secrets.token_urlsafe(32)
        with self._lock:
            self._prune(issued)
            self._issued[token] = (identity, issued, expires)
        return token, issued, expires

    def _prune(self, now: datetime) -> None:
        for token in [t for t, (_, _, exp) in self._issued.items() if exp <= now]:
            del self._issued[token]

    def lookup(self, token: str) -> Identity | None:
        found = self.fixed.get(token)
        if found is not None:
            return found
        with self._lock:
            entry = self._issued.get(token)
        if entry is None or entry[2] <= self._now():
            return None
        return entry[0]

    def details(self, token: str) -> tuple[Identity, datetime, datetime] | None:
        """An issued token's identity and times (None for fixed or unknown tokens)."""
        with self._lock:
            entry = self._issued.get(token)
        if entry is None or entry[2] <= self._now():
            return None
        return entry

    def revoke(self, token: str) -> bool:
        with self._lock:
            return self._issued.pop(token, None) is not None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project the request acts in, and the caller's roles."""

    user_id: str
    project_id: str
    is_admin: bool
    #: the project named in the URL (links repeat it), or None
    url_project_id: str | None
    roles: tuple[str, ...] = ()


Authenticator = Callable[[Request], Principal]


def noauth(request: Request) -> Principal:
    """Accept any request: the URL's project (else ``admin``), user ``admin``, admin role."""
    url_project = request.path_params.get("project_id")
    return Principal(user_id="admin", project_id=url_project or "admin", is_admin=True,
                     url_project_id=url_project, roles=(ADMIN_ROLE,))


def identity_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/identity/v3"


def unauthorized(request: Request) -> ApiError:
    return ApiError(401, UNAUTHORIZED,
                    headers={"WWW-Authenticate": f'Keystone uri="{identity_url(request)}"'})


def token_identity(request: Request, registry: TokenRegistry) -> Identity:
    """The identity of the request's ``X-Auth-Token``, or a 401 fault."""
    token = request.headers.get("x-auth-token")
    identity = registry.lookup(token) if token else None
    if identity is None or identity.project_id is None:
        raise unauthorized(request)
    return identity


def token_authenticator(registry: TokenRegistry) -> Authenticator:
    """Authenticate by ``X-Auth-Token`` against ``registry``."""

    def authenticate(request: Request) -> Principal:
        identity = token_identity(request, registry)
        assert identity.project_id is not None
        url_project = request.path_params.get("project_id")
        if url_project is not None and url_project != identity.project_id:
            raise ApiError(400, f"Malformed request URL: URL's project_id '{url_project}' "
                                f"doesn't match Context's project_id "
                                f"'{identity.project_id}'")
        return Principal(user_id=identity.user_id, project_id=identity.project_id,
                         is_admin=identity.is_admin, url_project_id=url_project,
                         roles=identity.roles)

    return authenticate


@dataclass
class AuthSettings:
    """How :func:`vmledger.api.create_app` identifies callers."""

    mode: str = "noauth"
    tokens: dict[str, Identity] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    token_lifetime: timedelta = DEFAULT_TOKEN_LIFETIME
    region: str = "RegionOne"

    @classmethod
    def build(cls, mode: str, *, tokens: Mapping[str, Identity] | Iterable[str] | None = None,
              users: Iterable[Account | str] | None = None,
              token_lifetime: timedelta = DEFAULT_TOKEN_LIFETIME) -> AuthSettings:
        """Settings from a mode, tokens (a mapping, or ``TOKEN:USER:PROJECT:ROLES`` specs)
        and users (accounts or ``NAME:PASSWORD:PROJECT:ROLES`` specs); ValueError when
        they do not fit together."""
        if mode not in AUTH_MODES:
            raise ValueError(f"unsupported auth mode {mode!r}; supported: "
                             f"{', '.join(AUTH_MODES)}")
        fixed: dict[str, Identity] = {}
        if isinstance(tokens, Mapping):
            fixed.update(tokens)
        elif tokens is not None:
            fixed.update(parse_token_spec(spec) for spec in tokens)
        accounts: dict[str, Account] = {}
        for user in users or ():
            account = parse_user_spec(user) if isinstance(user, str) else user
            accounts[account.name] = account
        if mode == "noauth" and (fixed or accounts):
            raise ValueError("tokens and users need --auth token or --auth keystone")
        if mode == "token" and not fixed:
            raise ValueError("--auth token needs at least one --token TOKEN:USER:PROJECT:ROLES")
        if mode == "token" and accounts:
            raise ValueError("users (passwords) need --auth keystone")
        if mode == "keystone" and not (accounts or fixed):
            raise ValueError("--auth keystone needs at least one --user "
                             "NAME:PASSWORD:PROJECT:ROLES (or --token)")
        return cls(mode=mode, tokens=fixed, accounts=accounts, token_lifetime=token_lifetime)

    def registry(self) -> TokenRegistry:
        return TokenRegistry(self.tokens, lifetime=self.token_lifetime)


__all__ = [
    "AUTH_MODES", "Account", "AuthSettings", "Authenticator", "Identity", "Principal",
    "TokenRegistry", "noauth", "parse_token_spec", "parse_user_spec", "token_authenticator",
]
