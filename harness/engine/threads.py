"""A thread count asked for by one thread and applied by the decoding thread, between two steps.

torch's intra-op thread count belongs to the thread that sets it, so a watcher (the base worker's, in
harness.runs.worker) cannot set it for the decode loop: it asks, and the decode loops apply the request.
"""

from __future__ import annotations

import torch

_requested: list[int] = []


def request_threads(n: int) -> None:
    """Ask the decoding thread to use n intra-op threads from its next step (any thread may ask).

    torch's thread count belongs to the thread that sets it, so the decode loops apply the request
    themselves (`apply_requested_threads`) instead of the watcher setting it.
    """
    _requested.append(n)


def apply_requested_threads() -> None:
    """Called by the decode and replay loops once per step: cheap when nothing was asked."""
    if _requested:
        n = _requested[-1]
        _requested.clear()
        torch.set_num_threads(n)


def drop_requests() -> None:
    """Forget a request not yet applied (the caller is setting the count itself)."""
    _requested.clear()
