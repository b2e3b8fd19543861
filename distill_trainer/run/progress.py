"""One progress line per method of a comparison: where it stands, time elapsed, an estimate of what
remains.

    progress = RunProgress(names, expected_seconds(results_dir), reused={"zero_shot"})
    progress.start("pbft_lora")   # [3/8] pbft_lora  ·  5:12 elapsed  ·  about 9 min left
    progress.done("pbft_lora")

The estimate takes each method's time from the newest earlier run under the same results folder that ran
it (not read back); a method that will be read back costs a second or two; a method with no history
counts as the mean of the methods measured so far, and with nothing measured there is no estimate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

REUSED_SECONDS = 2.0


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def expected_seconds(results_dir) -> dict[str, float]:
    """Each method's wall time in the newest earlier run (under results_dir) that ran it itself."""
    summaries = sorted(Path(results_dir).glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    expected = {}
    for path in summaries:  # oldest first: newer runs overwrite
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))["methods"]
        except (OSError, ValueError, KeyError):
            continue
        for row in rows:
            if not row.get("reused_from") and row.get("wall_seconds"):
                expected[row["method"]] = float(row["wall_seconds"])
    return expected


class RunProgress:
    def __init__(self, names: list[str], history: dict[str, float], reused: set[str] = frozenset()):
        self.names = list(names)
        self.expected = {n: REUSED_SECONDS if n in reused else history.get(n) for n in self.names}
        self.reused = set(reused)
        self.began = time.perf_counter()
        self.measured: dict[str, float] = {}
        self._method_began = self.began

    def remaining(self, name: str) -> float | None:
        """Seconds left from the start of `name` (itself included), or None without any basis."""
        left = self.names[self.names.index(name) :]
        ran = [s for n, s in self.measured.items() if n not in self.reused]
        fallback = sum(ran) / len(ran) if ran else None
        guesses = [self.expected[n] if self.expected[n] is not None else fallback for n in left]
        return None if any(g is None for g in guesses) else sum(guesses)

    def start(self, name: str) -> str:
        self._method_began = time.perf_counter()
        left = self.remaining(name)
        estimate = f"about {max(1, round(left / 60))} min left" if left is not None else "no estimate yet"
        line = (
            f"[{self.names.index(name) + 1}/{len(self.names)}] {name}"
            + (" (read back from an earlier run)" if name in self.reused else "")
            + f"  ·  {format_duration(time.perf_counter() - self.began)} elapsed  ·  {estimate}"
        )
        print(f"\n==== {line}", flush=True)
        return line

    def done(self, name: str) -> float:
        seconds = time.perf_counter() - self._method_began
        self.measured[name] = seconds
        return seconds
