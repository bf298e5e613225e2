"""CPU seconds of this process and of the worker processes it has reaped: the codec forks its
decoder's workers and reaps them before it returns, so a difference of two readings around a
codec call counts all of its CPU time (``time.process_time`` would miss the workers')."""

from __future__ import annotations

import os


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
