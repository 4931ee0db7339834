"""How many CPU threads PyTorch computes with.

PyTorch's intra-op threads spin while they wait for each other; on a core another process is using,
that slows both processes 10-30x (2 threads beside another job on 2 cores: 0.6 steps/s where 1 thread
makes 5). Unless the user chose (OMP_NUM_THREADS, REPA_THREADS, train.threads), repa computes with the
cores that are free: the cores it may use (affinity, cgroup quota) less what other processes used over
a short window, and looks again every REVISIT_SECONDS of a long CPU run. On a GPU nothing changes.

OpenMP's threads spin while they wait unless OMP_WAIT_POLICY=PASSIVE, which OpenMP reads once, when
PyTorch loads. repa sets it only where the user fixed more threads than other processes leave (measured:
2 threads beside another job on 2 cores, 2.4 -> 4.6 steps/s): on a free machine sleeping threads cost
31% (9.7 -> 6.7 steps/s), and the policy's own count leaves no thread waiting on a busy core.

The thread count changes the order of float reductions, so runs compared bit for bit (a resume
against an uninterrupted run) fix it: train.threads, REPA_THREADS or OMP_NUM_THREADS."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from repa.errors import ConfigError

log = logging.getLogger("repa")

THREADS_ENV = "REPA_THREADS"
MEASURE_SECONDS = 0.2  # the window measured before a command computes
REVISIT_SECONDS = 10.0  # between looks during a CPU run
LOOKS_BEFORE_MORE = 3  # looks in a row that find more free cores before the count grows
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def usable_cores() -> int:
    """The cores this process may run on: its affinity, within its cgroup's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota() -> float | None:
    """Cores' worth of CPU time the process's cgroup may use (v2 cpu.max, v1 cfs quota); None: no limit."""
    for folder in _cgroup_folders():
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max":
                return int(quota) / int(period)
        except (OSError, ValueError):
            pass  # no cgroup v2 limit here: try v1
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            if quota > 0:
                return quota / int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            pass  # nor v1: the next folder
    return None


def _cgroup_folders() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    folders = [root, root / "cpu", root / "cpu,cpuacct"]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            path = line.split(":", 2)[-1].lstrip("/")
            if path:
                folders = [root / path, root / "cpu" / path, root / "cpu,cpuacct" / path] + folders
    except OSError:
        pass  # no /proc (not Linux): the root folders only
    return folders


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    busy: float  # CPU seconds spent by everything on this process's cores
    own: float  # CPU seconds spent by this process and its children (data workers)


def sample_cpu() -> CpuSample | None:
    """Where /proc is readable (Linux); None elsewhere."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cores is not None and int(name[3:]) not in cores:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        busy += user + nice + system + irq + softirq + steal  # guest time is inside user already
    times = os.times()
    return CpuSample(time.monotonic(), busy / CLOCK_TICKS, times.user + times.system + _children_cpu())


def _children_cpu() -> float:
    """CPU seconds of this process's live children (DataLoader workers): os.times() counts only those
    waited for."""
    total = 0
    for task in Path("/proc/self/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass  # the child ended between the two reads: os.times() counts it once waited for
    return total / CLOCK_TICKS


def used_by_others(before: CpuSample, after: CpuSample) -> float:
    """Cores' worth of CPU that other processes used between two samples."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / elapsed)


def free_threads(cores: int, others: float) -> int:
    """Threads for the cores others leave: a core counts as taken once another process uses half of it."""
    return max(1, min(cores, math.floor(cores - others + 0.5)))


def user_threads(requested: int | str | None = None) -> int | None:
    """The thread count the user chose, if any: train.threads, REPA_THREADS, OMP_NUM_THREADS (in that order;
    "auto" in REPA_THREADS leaves it to the policy even where OMP_NUM_THREADS is set)."""
    if isinstance(requested, int):
        return requested
    mine = os.environ.get(THREADS_ENV, "").strip()
    if mine.lower() == "auto":
        return None
    if mine and not (mine.isdigit() and int(mine) > 0):
        raise ConfigError([f"{THREADS_ENV}={mine}: a number of threads (1 or more) or auto"])
    for value in (mine, os.environ.get("OMP_NUM_THREADS", "").strip()):
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def before_torch_loads() -> None:
    """Where the user's thread count (REPA_THREADS, OMP_NUM_THREADS) is more than the cores others leave,
    OpenMP's waiting threads sleep instead of spinning against them. Only before PyTorch loads (OpenMP
    reads the setting then, before a TOML's train.threads is read), never over the user's own OMP_WAIT_POLICY."""
    if WAIT_POLICY_ENV in os.environ or "torch" in sys.modules:
        return
    fixed = user_threads()
    if fixed is None:
        return
    current = policy()
    current.others = current._measure()  # start() uses it: the command begins within a second
    if fixed > free_threads(current.cores, current.others):
        os.environ[WAIT_POLICY_ENV] = "PASSIVE"
        current.passive = True


class ThreadPolicy:
    """The process's thread count: the user's, or the free cores' (looked at again during a run)."""

    def __init__(self):
        self.cores = usable_cores()
        self.fixed: int | None = None
        self.threads = self.cores
        self.others = 0.0
        self.passive = False  # OMP_WAIT_POLICY=PASSIVE set by before_torch_loads
        self._looks_wanting_more = 0
        self._last: CpuSample | None = None

    def start(self, requested: int | str | None = None, device: str = "cpu") -> None:
        """Before a command computes: the user's count, or the free cores' (a line when fewer than all).
        On a GPU the count stays as PyTorch sets it."""
        import torch

        self.fixed = user_threads(requested)
        if device != "cpu":
            if self.fixed is not None:
                self._set(torch, self.fixed)
            self.fixed = torch.get_num_threads()
            return
        if self._last is None or time.monotonic() - self._last.at > 1.0:  # not just measured before torch loaded
            self.others = self._measure()
        if self.fixed is not None:
            self._set(torch, self.fixed)
            self._warn_if_crowded()
            return
        self._set(torch, self._free_share())
        if self.threads < self.cores and _first_process():
            log.info("repa: other processes use %.1f of this machine's %d cores; computing with %d thread(s) "
                     "(REPA_THREADS, train.threads or OMP_NUM_THREADS choose)", self.others, self.cores, self.threads)

    def _measure(self) -> float:
        """Cores' worth of CPU other processes used over MEASURE_SECONDS (0 where /proc cannot say)."""
        before = sample_cpu()
        if before is None:
            return 0.0
        time.sleep(MEASURE_SECONDS)
        self._last = sample_cpu()
        return used_by_others(before, self._last)

    def _warn_if_crowded(self) -> None:
        """Where the policy cannot help: the user's count is more than the cores others leave."""
        if self.fixed > free_threads(self.cores, self.others) and _first_process():
            waiting = ("waiting threads sleep (OMP_WAIT_POLICY=PASSIVE), still slower" if self.passive else
                       "threads that wait spin against them (10-30x slower)")
            log.warning("repa: %d thread(s) chosen while other processes use %.1f of %d cores: %s; fewer threads, "
                        "or REPA_THREADS=auto, would be faster", self.fixed, self.others, self.cores, waiting)

    def revisit(self) -> None:
        """During a CPU run: every REVISIT_SECONDS, the count for the cores others left over that time."""
        if self.fixed is not None or self._last is None or time.monotonic() - self._last.at < REVISIT_SECONDS:
            return
        import torch

        now = sample_cpu()
        if now is None:
            return
        self.others, self._last = used_by_others(self._last, now), now
        threads = self._free_share()
        # Fewer threads at once (a thread on a taken core slows the run 10-30x); more only when the last
        # LOOKS_BEFORE_MORE looks agree (too few for a while costs at most the idle core): no flapping
        # around a half-used core.
        self._looks_wanting_more = self._looks_wanting_more + 1 if threads > self.threads else 0
        if threads < self.threads or self._looks_wanting_more >= LOOKS_BEFORE_MORE:
            self._looks_wanting_more = 0
            self._set(torch, threads)
            if _first_process():
                log.info("repa: other processes now use %.1f of %d cores; computing with %d thread(s)",
                         self.others, self.cores, threads)

    def _free_share(self) -> int:
        """The free cores' threads, at most this process's share of the cores where a launcher started
        several on this machine (their own threads count as others' once they compute)."""
        return min(free_threads(self.cores, self.others), max(1, self.cores // _launch_processes()))

    def data_workers(self, configured: int) -> int:
        """DataLoader workers on a CPU: those the cores left after the compute threads allow."""
        if self.fixed is not None:
            return configured
        spare = max(0, math.floor(self.cores - self.others + 0.5) - self.threads)
        return min(configured, spare)

    def _set(self, torch, threads: int) -> None:
        self.threads = threads
        torch.set_num_threads(threads)
        try:  # inter-op threads: settable once, before any inter-op work
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass  # already fixed for this process: the intra-op count is what matters


def _launch_processes() -> int:
    """Processes of this launch on this machine (torchrun, accelerate): each starts with its share."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _first_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


_policy: ThreadPolicy | None = None


def policy() -> ThreadPolicy:
    """The process's policy (one per process: its measurements span the run)."""
    global _policy
    if _policy is None:
        _policy = ThreadPolicy()
    return _policy
