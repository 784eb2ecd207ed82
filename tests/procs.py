"""Looking for processes from a test: what a command left running."""

from __future__ import annotations

import time
from pathlib import Path


def processes_mentioning(text: str, grace_s: float = 0.0) -> list[int]:
    """Pids whose command line holds text, after waiting up to grace_s for them to go."""
    deadline = time.monotonic() + grace_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and text in (entry / "cmdline").read_text():
                    found.append(int(entry.name))
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
