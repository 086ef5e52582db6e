"""Prometheus text exposition as prometheus_client writes it (so as vLLM's pages read): the number
format, a bucketed histogram and the process collector's families. No client library: a scrape only
formats counters."""

from __future__ import annotations

import math
import os
import resource
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field


def go_float(d: float) -> str:
    """Format a number as prometheus_client (and so vLLM) does: Go's shortest form."""
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(float(d))
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


@dataclass(slots=True)
class Histogram:
    buckets: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.buckets, v)] += 1
        self.total += v
        self.n += 1


def process_families() -> list[str]:
    # The standard process collector's families, so a scrape looks (and weighs) like vLLM's.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm") as f:
            vm_pages, rss_pages = (int(x) for x in f.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        vm, rss = vm_pages * page, rss_pages * page
    except OSError:
        vm = rss = 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = 0
    rows = [
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vm),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss),
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
         usage.ru_utime + usage.ru_stime),
        ("process_open_fds", "gauge", "Number of open file descriptors.", fds),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.", soft),
    ]  # fmt: skip
    out: list[str] = []
    for name, kind, help_, value in rows:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {go_float(value)}"]
    return out
