"""The errors a handler raises to answer 4xx/5xx; the app turns them into `{"detail": ...}` bodies."""

from __future__ import annotations

import math
import time


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        self.status, self.detail, self.headers = status, detail, headers


def queue_full(batcher) -> ApiError:
    """503 with Retry-After: about twice the model's last job (a batch or a latent request), or of the
    running one so far when it has run longer (before the first job ends there is no last), at least 1 s."""
    running = 0.0 if batcher.running_since is None else time.perf_counter() - batcher.running_since
    retry = max(1, math.ceil(max(batcher.last_compute_s, running) * 2))
    return ApiError(503, f"server busy: {batcher.pending} requests queued; retry in {retry} s",
                    {"Retry-After": str(retry)})


def shutting_down() -> ApiError:
    return ApiError(503, "server shutting down: retry (on another instance, or once it is back)",
                    {"Connection": "close"})
