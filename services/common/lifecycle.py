"""A child of the ``ragchat up`` supervisor ends when the supervisor dies, even by kill -9.

The supervisor names itself in ``RAGCHAT_SUPERVISOR_PID``; the child asks the kernel (Linux
``PR_SET_PDEATHSIG``) for SIGTERM when its parent goes, then checks that the parent is still the
supervisor (it may have died before the request). This runs in the child at its start, not in a
``preexec_fn`` between fork and exec: Python code there, in a process with gRPC's threads, can
deadlock or crash the child (the ``subprocess`` documentation warns of it; seen here as a segfault).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

SUPERVISOR_PID = "RAGCHAT_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def follow_supervisor(environ: Mapping[str, str] | None = None) -> bool:
    """End this process (SIGTERM) when the supervisor that started it dies; False when not supervised."""
    env = os.environ if environ is None else environ
    raw = env.get(SUPERVISOR_PID, "").strip()
    if not raw.isdigit() or not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(raw):
        # The supervisor died before the request took effect: do what the signal would have done.
        os.kill(os.getpid(), signal.SIGTERM)
    return True
