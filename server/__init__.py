"""HTTP server for textebm: `create_app(run_folder, ...)` is the ASGI app factory; `textebm serve` runs it.

Kept light: importing `server` does not import torch or FastAPI until `create_app` is used.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """See `server.app.create_app`."""
    from server.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
