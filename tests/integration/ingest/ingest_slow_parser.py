"""A parser entry for the sandbox child that never finishes (the service must kill it)."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.ingest.extraction import Extracted, ParseOptions


def sleep_forever(data: bytes, progress: Callable[[int, int], None], options: ParseOptions) -> Extracted:
    while True:
        time.sleep(1)
