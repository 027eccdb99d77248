"""Where the reliability tests put what they measured.

Each test logs its numbers (shown by pytest when it fails) and, when ``RELIABILITY_REPORT_DIR``
is set, also writes them to ``<dir>/<name>.json`` for the README's tables.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("tests.reliability")


def report(name: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    log.info("%s: %s", name, text)
    folder = os.environ.get("RELIABILITY_REPORT_DIR")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{name}.json").write_text(text + "\n", encoding="utf-8")
