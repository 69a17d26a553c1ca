"""What a run reports as it goes: a tqdm bar, a JSON-lines log and a Python callback (rank 0 only).

Each log line is one JSON object. Step records have ``step``, ``epoch``, ``loss``, ``ce``, ``area``,
``tv``, ``lr``, ``images`` and ``seconds``; other lines have an ``event`` (``start``, ``resume``,
``checkpoint``, ``stopped``, ``done``). The callback gets the same dicts, so the app can draw live curves.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic import write_failures

Callback = Callable[[dict[str, Any]], None]


class RunReporter:
    def __init__(
        self,
        log_path: Path | None,
        total_steps: int,
        initial_step: int = 0,
        append: bool = False,
        callback: Callback | None = None,
        progress: bool = True,
    ) -> None:
        self.callback = callback
        self.handle = None
        if log_path is not None:
            with write_failures(log_path):
                log_path.parent.mkdir(parents=True, exist_ok=True)
                self.handle = open(log_path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - open for the run
        self.bar = tqdm(
            total=total_steps, initial=initial_step, unit="step", desc="train", file=sys.stderr,
            disable=not progress, dynamic_ncols=True,
        )

    def _emit(self, record: dict[str, Any]) -> None:
        if self.handle is not None:
            with write_failures(self.handle.name, kept="the lines before are kept"):
                self.handle.write(json.dumps(record) + "\n")
                self.handle.flush()
        if self.callback is not None:
            self.callback(record)

    def step(self, record: dict[str, Any]) -> None:
        self._emit(record)
        self.bar.update(1)
        self.bar.set_postfix(
            {k: f"{record[k]:.3g}" for k in ("loss", "ce", "area", "tv", "destroy", "insert", "lr") if k in record} | {"epoch": record["epoch"]},
            refresh=False,
        )

    def event(self, name: str, **fields: Any) -> None:
        self._emit({"event": name, "time": round(time.time(), 3), **fields})

    def note(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        if self.handle is not None:
            handle, self.handle = self.handle, None
            with write_failures(handle.name, kept="the lines before are kept"):
                handle.close()
