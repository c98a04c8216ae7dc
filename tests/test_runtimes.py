"""The runtime supervisor starts, restarts and stops real simulator processes."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from inferegator.config.model import RuntimeConfig
from inferegator.runtimes import RuntimeSupervisor, next_backoff
from tests.support.processes import free_port, wait_until

CLI = os.path.join(os.path.dirname(sys.executable), "inferegator")


def sim_runtime(name, *flags, restart=True):
    port = free_port()
    return RuntimeConfig(name=name, command=(CLI, "sim", "--port", str(port), "--instant",
                                             *flags),
                         health=f"http://127.0.0.1:{port}/health", restart=restart)


def group_alive(pgid) -> bool:
    """True while the process group has any member, zombies included."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def live_members(pgid) -> list[int]:
    """The group's processes that still run (Linux /proc).

    PID 1 on these machines reaps orphans lazily (~1-2 s), so a killed runtime's worker can
    linger as a zombie: it runs nothing and holds no port, so it does not count here.
    """
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry))
    return pids


@pytest.fixture
def supervise(tmp_path):
    """Start supervisors with fast timings; every process they launched is gone afterwards."""
    supervisors, launched = [], []

    def popen(*args, **kwargs):
        proc = subprocess.Popen(*args, **kwargs)
        launched.append(proc)
        return proc

    def start(*runtimes, **kwargs):
        options = {"log_dir": str(tmp_path), "poll_interval_s": 0.02, "backoff_first_s": 0.05,
                   "popen": popen, **kwargs}
        supervisor = RuntimeSupervisor(list(runtimes), **options)
        supervisors.append(supervisor)
        return supervisor.start()

    start.launched = launched
    yield start
    for supervisor in supervisors:
        # Graceful stops are test_stop_leaves_no_process_behind's subject; here a gunicorn's
        # ~1.2 s graceful exit per test is not worth waiting for: SIGTERM, then SIGKILL at once.
        supervisor.stop(timeout=0)
    for proc in launched:  # a safety net, should a supervisor have lost track of one
        if live_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_until(lambda: not any(live_members(proc.pid) for proc in launched), timeout=5)


def only(supervisor) -> dict:
    [status] = supervisor.status()
    return status


def health_status(url) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_runtime_starts_and_answers_health(supervise):
    supervisor = supervise(sim_runtime("sim-a"))
    assert supervisor.wait_healthy(10)
    status = only(supervisor)
    assert status["running"] and status["healthy"] is True and status["restarts"] == 0
    assert status["pid"] > 0 and status["error"] is None


def test_killed_runtime_is_restarted(supervise, caplog):
    supervisor = supervise(sim_runtime("sim-a"))
    assert supervisor.wait_healthy(10)
    old_pid = only(supervisor)["pid"]
    os.kill(old_pid, signal.SIGKILL)
    status = wait_until(lambda: (s := only(supervisor))["running"] and s["pid"] != old_pid
                        and s, timeout=10)
    assert status["restarts"] == 1 and status["exit_code"] == -signal.SIGKILL
    assert supervisor.wait_healthy(10)
    assert only(supervisor)["healthy"] is True
    assert any("sim-a" in r.message and "-9" in r.message for r in caplog.records)
    assert not live_members(old_pid)  # the orphaned gunicorn worker went with its master


def test_runtime_without_restart_stays_down(supervise):
    supervisor = supervise(sim_runtime("sim-a", restart=False))
    assert supervisor.wait_healthy(10)
    os.kill(only(supervisor)["pid"], signal.SIGKILL)
    wait_until(lambda: only(supervisor)["exit_code"] == -signal.SIGKILL, timeout=5)
    with pytest.raises(TimeoutError):  # many backoff periods pass without a relaunch
        wait_until(lambda: len(supervise.launched) > 1, timeout=0.3)
    status = only(supervisor)
    assert not status["running"] and status["pid"] is None and status["restarts"] == 0
    assert not supervisor.wait_healthy(0)


def test_stop_leaves_no_process_behind(tmp_path):
    with RuntimeSupervisor([sim_runtime("sim-a"), sim_runtime("sim-b")],
                           log_dir=str(tmp_path)) as supervisor:
        assert supervisor.wait_healthy(10)
        pids = [status["pid"] for status in supervisor.status()]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not group_alive(pid)  # the gunicorn workers too
    assert [status["running"] for status in supervisor.status()] == [False, False]
    assert "SGLang-compatible simulator" in (tmp_path / "sim-a.log").read_text()


def test_missing_command_is_reported_and_the_others_run(supervise, caplog):
    missing = RuntimeConfig(name="ghost", command=("/nonexistent/inferegator-ghost",))
    supervisor = supervise(missing, sim_runtime("sim-a"))
    ghost, sim = supervisor.status()
    assert not ghost["running"] and ghost["pid"] is None and "No such file" in ghost["error"]
    assert supervisor.wait_healthy(10) and sim["running"]
    wait_until(lambda: supervisor.status()[0]["restarts"] >= 2, timeout=5)  # retried, backing off
    assert any("ghost could not start" in r.message for r in caplog.records)


def test_slow_starter_does_not_block_start(supervise):
    runtime = sim_runtime("slow", "--slow-start-s", "2")
    began = time.monotonic()
    supervisor = supervise(runtime)
    assert time.monotonic() - began < 1
    assert wait_until(lambda: health_status(runtime.health) == 503, timeout=5)
    assert not supervisor.wait_healthy(0)
    assert only(supervisor)["healthy"] is False and only(supervisor)["running"]


def test_sglang_runtime_runs_its_launcher_with_its_gpus_and_restarts(supervise):
    """A type sglang runtime, with the simulator as its launcher: derived argv, env, health."""
    launches = []

    def popen(argv, **kwargs):
        launches.append((argv, kwargs["env"]))
        proc = subprocess.Popen(argv, **kwargs)
        supervise.launched.append(proc)
        return proc

    runtime = RuntimeConfig(name="sglang-a", type="sglang", model_path="acme/weights",
                            port=free_port(), gpu_ids=(1, 3),
                            launcher_module="inferegator.simulator.launch_server",
                            env={"INFEREGATOR_SIM_ARGS": "--instant"})
    assert runtime.command is None and runtime.health is None  # both derived
    supervisor = supervise(runtime, popen=popen)
    assert supervisor.wait_healthy(10)  # probed on SGLang's /health at its host and port
    url = f"http://127.0.0.1:{runtime.port}"
    with urllib.request.urlopen(url + "/v1/models", timeout=5) as resp:
        # no served name: the model path
        assert json.loads(resp.read())["data"][0]["id"] == "acme/weights"
    [(argv, env)] = launches
    assert argv == [sys.executable, "-m", "inferegator.simulator.launch_server",
                    "--model-path", "acme/weights", "--host", "127.0.0.1",
                    "--port", str(runtime.port), "--tp-size", "2"]
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["INFEREGATOR_SIM_ARGS"] == "--instant"
    assert env["PATH"] == os.environ["PATH"]  # on top of the supervisor's own environment

    old_pid = only(supervisor)["pid"]
    os.kill(old_pid, signal.SIGKILL)
    status = wait_until(lambda: (s := only(supervisor))["running"] and s["pid"] != old_pid
                        and s, timeout=10)
    assert status["restarts"] == 1 and status["exit_code"] == -signal.SIGKILL
    assert supervisor.wait_healthy(10)
    assert launches[1] == launches[0]


@pytest.mark.parametrize("previous, uptime, expected", [
    (None, 0, 1), (1, 0.5, 2), (16, 3, 30), (30, 10, 30), (30, 60, 1),
])
def test_backoff_doubles_to_a_cap_and_resets_after_a_stable_run(previous, uptime, expected):
    assert next_backoff(previous, uptime) == expected
