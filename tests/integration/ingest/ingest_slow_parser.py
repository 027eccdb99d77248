"""A parser entry for the sandbox child that never finishes (the service must kill it)."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.ingest.extraction import Extracted


def sleep_forever(data: bytes, progress: Callable[[int, int], None]) -> Extracted:
    while True:
        time.sleep(1)
