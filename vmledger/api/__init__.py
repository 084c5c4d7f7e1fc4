"""The OpenStack Compute API v2.1 over the engine: ``create_app(engine)``."""

from vmledger.api.app import create_app

__all__ = ["create_app"]
