"""Optical character recognition of page images with the Tesseract command-line program.

Runs inside the extraction sandbox child. Tesseract is a separate process: it gets a time
limit of its own, one OpenMP thread (the service already runs jobs in parallel), and dies
with the child should the service kill the child (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import signal
import subprocess
import sys
from typing import Protocol

_PR_SET_PDEATHSIG = 1


class OcrUnavailable(Exception):
    """Tesseract (or a language it needs) is not installed."""


class OcrError(Exception):
    """Tesseract ran and failed."""


class _Image(Protocol):
    def save(self, fp: io.BytesIO, format: str) -> None: ...


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked Tesseract process
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def tesseract_path() -> str:
    path = shutil.which("tesseract")
    if path is None:
        raise OcrUnavailable("the tesseract program is not installed (Debian: tesseract-ocr, tesseract-ocr-kor)")
    return path


def ocr_image(image: _Image, languages: str, *, timeout_seconds: float) -> str:
    """The text Tesseract reads in ``image`` (a PIL image) with ``languages`` (e.g. ``kor+eng``)."""
    program = tesseract_path()
    buffer = io.BytesIO()
    # Uncompressed (PGM for a grayscale page): PNG would spend ~0.15 s compressing a 300 dpi
    # page that Tesseract decompresses at once; the pipe carries the raw pixels faster.
    image.save(buffer, format="PPM")
    environment = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        completed = subprocess.run(
            [program, "stdin", "stdout", "-l", languages, "--psm", "3"],
            input=buffer.getvalue(),
            capture_output=True,
            timeout=timeout_seconds,
            env=environment,
            preexec_fn=_die_with_parent,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OcrError(f"tesseract took longer than {timeout_seconds:g} s on one page") from None
    except OSError as error:
        raise OcrUnavailable(f"tesseract cannot run ({error})") from None
    if completed.returncode != 0:
        detail = completed.stderr.decode("utf-8", "replace").strip().splitlines()
        message = detail[-1] if detail else f"exit code {completed.returncode}"
        if "Failed loading language" in completed.stderr.decode("utf-8", "replace"):
            raise OcrUnavailable(f"tesseract lacks a language of OCR_LANGUAGES={languages!r} ({message})")
        raise OcrError(f"tesseract failed ({message})")
    return completed.stdout.decode("utf-8", "replace")
