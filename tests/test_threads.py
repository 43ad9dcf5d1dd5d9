"""Thread counts from the usable cores, and OpenMP waiting that does not burn a shared machine."""

import os
import subprocess
import sys

from seedbed import threads


def test_usable_cores_follow_the_affinity_mask_and_a_cgroup_quota(tmp_path, monkeypatch):
    quota_of = threads._cgroup_quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    assert threads.available_cores() == 4
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 2)
    assert threads.available_cores() == 2 and threads.threads_for(2) == 1 and threads.threads_for(8) == 1
    cpu_max = tmp_path / "cpu.max"
    for text, want in (("150000 100000\n", 2), ("max 100000\n", None), ("50000 100000", 1), ("garbage", None)):
        cpu_max.write_text(text)
        assert quota_of(cpu_max) == want, text


def test_waiting_is_set_only_when_the_user_chose_nothing(monkeypatch):
    for key in threads.WAIT_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    assert threads.quiet_waiting() and os.environ["GOMP_SPINCOUNT"] == threads.SPIN_COUNT
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not threads.quiet_waiting() and "GOMP_SPINCOUNT" not in os.environ


def test_the_command_line_settles_threads_before_torch_loads():
    code = ("import os, sys; from seedbed.cli import main\n"
            "sys.argv = ['seedbed', 'trials', '/nonexistent']\n"
            "try: main(['trials', '/nonexistent'])\n"
            "except SystemExit: pass\n"
            "import torch; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in (*threads.WAIT_SETTINGS, "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    spin, omp, torch_threads = out.stdout.split()[-3:]
    assert spin == threads.SPIN_COUNT and int(omp) == threads.available_cores() == int(torch_threads), out.stdout + out.stderr
