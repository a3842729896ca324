"""A run killed at any point leaves nothing that the next run does not clean (issue 23)."""

import os
import signal
import subprocess
import sys
import time

from secateurs.files import _host, remove_stale_work, work_directory
from secateurs.offload import DiskTensors


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_work_directories_of_dead_processes_are_removed_by_the_next_one(tmp_path):
    stale = tmp_path / f"secateurs-weights-{_host()}.{_dead_pid()}.abc123"
    running = tmp_path / f"secateurs-activations-{_host()}.{os.getpid()}.def456"
    other_host = tmp_path / f"secateurs-weights-elsewhere.{_dead_pid()}.ghi789"
    for d in (stale, running, other_host):
        d.mkdir()
    with DiskTensors(tmp_path) as store:
        assert store.root.name.startswith(f"secateurs-offload-{_host()}.{os.getpid()}.")
        assert not stale.exists() and running.exists() and other_host.exists()
    assert not store.root.exists()
    assert remove_stale_work(tmp_path) == []  # this process still runs
    fresh = work_directory("weights", tmp_path)
    assert fresh.parent == tmp_path and fresh.is_dir()


def test_a_killed_streamed_prune_leaves_nothing_the_next_run_keeps(tiny_model_dir, data_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    command = [sys.executable, "-m", "secateurs", "--quiet", "prune", str(tiny_model_dir), "--method", "sparsegpt",
               "--sparsity", "0.5", "--calib", "c4", "--samples", "4", "--seqlen", "64", "--offload", "disk",
               "--offload-dir", str(work), "--data-dir", str(data_dir), "--eval-max-windows", "2"]
    child = subprocess.Popen([*command, "--out", str(tmp_path / "killed")])
    deadline = time.monotonic() + 120
    while not any(work.iterdir()) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = sorted(p.name for p in work.iterdir())
    assert left, "the run ended before it wrote any work directory: kill it earlier"
    done = subprocess.run([*command, "--out", str(tmp_path / "again")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list(work.iterdir()) == []  # the killed run's work is gone, and this run removed its own
    assert not (tmp_path / "killed").exists()
