"""The OpenStack Compute API v2.1 over the engine: ``create_app(engine, auth=...)``."""

from vmledger.api.app import create_app
from vmledger.api.auth import AUTH_MODES, Account, AuthSettings, Identity

__all__ = ["AUTH_MODES", "Account", "AuthSettings", "Identity", "create_app"]
