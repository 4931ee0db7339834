"""The CPU thread policy (repa.threads): the cores other processes leave, the user's choice first."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from repa import threads
from repa.errors import ConfigError
from tests.conftest import run_cli

SPIN = "import time\nprint('spinning', flush=True)\nend = time.time() + 60\nwhile time.time() < end: pass\n"


@pytest.fixture
def auto(monkeypatch):
    """The policy deciding (the suite otherwise fixes the thread count); torch's count restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("REPA_THREADS", "auto")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def spin_elsewhere() -> subprocess.Popen:
    """A process keeping one core busy that is not this process's child (a child's CPU time is this
    process's own, as a DataLoader worker's is): a grandchild in its own session, through a launcher."""
    launcher = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {SPIN!r}])\n"
    process = subprocess.Popen([sys.executable, "-c", launcher], start_new_session=True, stdout=subprocess.PIPE)
    process.stdout.readline()  # it is spinning (Python starts slowly on a busy machine)
    return process


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def competitor():
    """Another process keeping one core busy (started half a second before it is measured)."""
    process = spin_elsewhere()
    time.sleep(0.5)
    yield process
    stop(process)


@pytest.mark.parametrize("cores,others,expected", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 2.0, 1), (2, 3.5, 1),
                                                   (8, 3.0, 5), (8, 0.2, 8)])
def test_free_threads_leave_the_cores_others_use(cores, others, expected):
    assert threads.free_threads(cores, others) == expected


def test_cpu_used_by_others_is_everything_less_this_process_and_its_children():
    before = threads.CpuSample(at=10.0, busy=100.0, own=5.0)
    after = threads.CpuSample(at=12.0, busy=103.0, own=6.0)  # 3 s busy over 2 s, 1 s of it ours
    assert threads.used_by_others(before, after) == pytest.approx(1.0)
    assert threads.used_by_others(after, after) == 0.0


def test_the_users_choice_comes_first_and_a_bad_one_is_one_line(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("REPA_THREADS", "5")
    assert threads.user_threads(7) == 7 and threads.user_threads("auto") == 5
    monkeypatch.delenv("REPA_THREADS")
    assert threads.user_threads("auto") == 3
    monkeypatch.setenv("REPA_THREADS", "auto")
    assert threads.user_threads("auto") is None  # auto even where OMP_NUM_THREADS is set
    monkeypatch.setenv("REPA_THREADS", "two")
    with pytest.raises(ConfigError, match=r"REPA_THREADS=two: a number of threads \(1 or more\) or auto"):
        threads.user_threads()


def test_a_cgroup_quota_bounds_the_usable_cores(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores' worth
    monkeypatch.setattr(threads, "_cgroup_folders", lambda: [tmp_path])
    assert threads.cgroup_cpu_quota() == 1.5
    assert threads.usable_cores() == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota() is None and threads.usable_cores() == len(os.sched_getaffinity(0))


def test_a_busy_core_is_left_to_its_process(auto, competitor):
    policy = threads.ThreadPolicy()
    policy.start()
    assert policy.others >= 0.8  # the competitor's core (and whatever else runs)
    assert policy.threads == threads.free_threads(policy.cores, policy.others) <= max(1, policy.cores - 1)
    assert torch.get_num_threads() == policy.threads


def test_a_long_run_looks_again_when_another_process_starts(auto, monkeypatch):
    policy = threads.ThreadPolicy()
    policy.start()
    started_with = policy.threads
    monkeypatch.setattr(threads, "REVISIT_SECONDS", 0.3)
    process = spin_elsewhere()
    try:
        time.sleep(1.0)
        policy.revisit()
    finally:
        stop(process)
    assert policy.others >= 0.8 and policy.threads == threads.free_threads(policy.cores, policy.others)
    assert policy.threads <= started_with and torch.get_num_threads() == policy.threads


def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_this_processs_own_children_are_not_others():
    def cpu_of(pid: int) -> float:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / threads.CLOCK_TICKS

    child = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        wait_until(lambda: cpu_of(child.pid) >= 0.1)  # it is spinning (Python starts slowly on a busy machine)
        # The child's own reading inside this process's: what it spun is all within what was sampled.
        before = threads.sample_cpu()
        child_before = cpu_of(child.pid)
        wait_until(lambda: cpu_of(child.pid) - child_before >= 0.3)
        child_after = cpu_of(child.pid)
        after = threads.sample_cpu()
    finally:
        child.kill()
        child.wait()
    spun = child_after - child_before
    assert spun >= 0.3
    assert after.own - before.own >= spun - 0.02  # and its CPU time counts as this process's


def test_the_users_count_is_kept_and_data_workers_follow_the_spare_cores(monkeypatch):
    monkeypatch.setenv("REPA_THREADS", "1")
    policy = threads.ThreadPolicy()
    policy.start()
    assert policy.fixed == 1 and torch.get_num_threads() == 1 and policy.data_workers(4) == 4
    policy.revisit()
    assert torch.get_num_threads() == 1
    auto = threads.ThreadPolicy()
    auto.cores, auto.others, auto.threads = 4, 0.0, 2
    assert auto.data_workers(4) == 2 and auto.data_workers(1) == 1
    auto.others = 2.0
    assert auto.data_workers(4) == 0


@pytest.mark.slow
def test_repa_run_beside_a_busy_process_computes_with_the_free_cores(tiny_toml, competitor):
    cores = threads.usable_cores()
    result = run_cli("run", str(tiny_toml()), "--no-progress", "--set", "train.max_steps=2",
                     env={"REPA_THREADS": "auto"})
    assert result.returncode == 0, result.stderr[-2000:]
    if cores > 1:
        found = re.search(r"other processes use ([\d.]+) of this machine's (\d+) cores; computing with (\d+) thread",
                          result.stderr)
        assert found and int(found.group(2)) == cores and int(found.group(3)) <= cores - 1, result.stderr[-2000:]


def test_a_users_count_above_the_free_cores_is_said_once(monkeypatch, competitor, caplog):
    """Where the policy cannot help (the user fixed more threads than others leave), one warning says so."""
    monkeypatch.setenv("REPA_THREADS", str(threads.usable_cores()))
    policy = threads.ThreadPolicy()
    with caplog.at_level("WARNING", logger="repa"):
        policy.start()
    if policy.cores > 1:
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith(f"repa: {policy.cores} thread(s) chosen while other processes use ") and "auto" in line


WAIT_POLICY_CHILD = ("import os, sys\nfrom repa.threads import before_torch_loads\nbefore_torch_loads()\n"
                     "assert 'torch' not in sys.modules\nprint(os.environ.get('OMP_WAIT_POLICY'))\n")


def wait_policy_chosen(env: dict) -> str:
    """OMP_WAIT_POLICY as a fresh process (PyTorch not loaded yet) leaves it after before_torch_loads."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "REPA_THREADS", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", WAIT_POLICY_CHILD], env={**base, **env}, capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


def test_threads_the_user_fixed_on_a_busy_machine_sleep_while_they_wait(competitor):
    """Only there: PASSIVE costs a free machine 31% (docs in repa.threads), and the user's own setting wins."""
    cores = threads.usable_cores()
    if cores > 1:
        assert wait_policy_chosen({"REPA_THREADS": str(cores)}) == "PASSIVE"
    assert wait_policy_chosen({"REPA_THREADS": "1"}) == "None"  # one thread never waits
    assert wait_policy_chosen({"REPA_THREADS": "auto"}) == "None"  # the policy leaves the busy core alone
    assert wait_policy_chosen({"REPA_THREADS": str(cores), "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_each_process_of_a_launch_keeps_to_its_share_of_the_cores(auto, monkeypatch):
    """torchrun/accelerate on one machine: each local process computes with cores / processes, when it
    starts and when it looks again, even with the machine otherwise free."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(threads, "used_by_others", lambda before, after: 0.0)
    monkeypatch.setattr(threads, "REVISIT_SECONDS", 0.0)
    policy = threads.ThreadPolicy()
    policy.cores = 4
    policy.start()
    assert policy.threads == 2 and torch.get_num_threads() == 2
    policy.revisit()
    assert policy.threads == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    for _ in range(threads.LOOKS_BEFORE_MORE):
        policy.revisit()
    assert policy.threads == 4  # alone, all four free cores


def test_the_count_drops_at_once_and_grows_only_after_looks_that_agree(auto, monkeypatch):
    """Around a half-used core the count does not flap: fewer threads on the first look that says so,
    more after LOOKS_BEFORE_MORE looks in a row."""
    seen = iter([0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # cores' worth others used, look by look
    monkeypatch.setattr(threads, "used_by_others", lambda before, after: next(seen))
    monkeypatch.setattr(threads, "REVISIT_SECONDS", 0.0)
    policy = threads.ThreadPolicy()
    policy.cores = 2
    policy.start()
    counts = []
    for _ in range(7):
        policy.revisit()
        counts.append(policy.threads)
    assert counts == [1, 1, 1, 1, 1, 1, 2] and torch.get_num_threads() == 2
