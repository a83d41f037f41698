"""The HTTP API: an app factory, one router per resource, errors mapped in one place."""

from batchd.api.app import create_app

__all__ = ["create_app"]
