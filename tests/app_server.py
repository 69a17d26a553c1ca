"""Waiting for a `streamlit run app.py` server to answer: shared by the browser tests and bench_browser."""

from __future__ import annotations

import subprocess
import time
import urllib.request


def wait_until_healthy(url: str, process: subprocess.Popen, log_name: str, timeout: float = 120) -> None:
    """Return once ``url``'s health endpoint answers 200; raise if the server exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start (exit code {process.poll()}); see {log_name}") from None
            time.sleep(0.25)  # polling a socket: no page to wait on yet
