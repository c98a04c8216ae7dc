"""Start, watch and restart the backend runtimes the gateway supervises (``runtimes:`` in YAML).

The ``inferegator serve`` master owns these processes. It is not gevent-patched, so one plain
daemon thread watches them. Health is probed only for reporting: nothing here waits for a runtime
to become healthy, so a slow starter (an SGLang runtime loading weights) never holds up the
gateway; routing learns a backend's health on its own.

What a runtime runs and where it is probed come from config/launch.py, the one derivation the
schema uses too: a ``type: sglang`` runtime is launched as ``python -m sglang.launch_server ...``
with the flags and ``CUDA_VISIBLE_DEVICES`` made from its settings, and probed on SGLang's
``/health`` unless it names its own health URL.
"""

import errno
import http.client
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from .config.launch import launch_spec, runtime_health
from .config.model import RuntimeConfig

LOG = logging.getLogger(__name__)

# Runtime health URLs are local: never send the probe through an HTTP(S)_PROXY from the env.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def next_backoff(previous: float | None, uptime: float, first: float = 1.0, cap: float = 30.0,
                 stable_after: float = 60.0) -> float:
    """Seconds to wait before restarting a runtime whose last process ran ``uptime`` seconds.

    Doubles on each quick crash (1, 2, 4 ... 30 s) so a broken runtime does not spin, and
    starts again from ``first`` once a process stayed up ``stable_after`` seconds.
    """
    if previous is None or uptime >= stable_after:
        return first
    return min(previous * 2, cap)


def describe_exit(code: int) -> str:
    """'code 3', or 'code -9 (SIGKILL)' for a process a signal ended."""
    if code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"code {code}"


def probe(url: str, timeout: float) -> bool:
    """True when a GET of ``url`` answers 200; any error or other status is unhealthy."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, http.client.HTTPException, ValueError):  # HTTPError is an OSError
        return False


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


class _Runtime:
    """One supervised runtime: its config and the state of its current process."""

    def __init__(self, config: RuntimeConfig):
        self.config = config
        self.health = runtime_health(config)  # type sglang: always one, SGLang's /health
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.exit_code: int | None = None  # how the last process ended
        self.error: str | None = None  # why the last launch failed
        self.healthy: bool | None = None  # the last probe of the current process
        self.backoff: float | None = None  # the last restart delay; None until the first exit
        self.restart_at: float | None = None  # monotonic time of the next launch


class RuntimeSupervisor:
    """Runs each configured runtime in its own process group and restarts those that exit.

    ``popen`` and ``log`` are injectable (tests record the processes they must clean up);
    ``log_dir``, when set, receives each runtime's stdout and stderr as ``<name>.log``, else
    the runtimes write to ``output`` (None: the master's standard output; serve gives its
    standard error, as its standard output is the access log's). ``bound`` execs each
    runtime through runtime_exec, so that it dies with this process (serve's master)
    however that ends. The timing knobs default to the production values.
    """

    def __init__(self, runtimes: list[RuntimeConfig], log: logging.Logger = LOG,
                 popen=subprocess.Popen, *, log_dir: str | None = None, output=None,
                 bound: bool = False,
                 poll_interval_s: float = 0.5, backoff_first_s: float = 1.0,
                 backoff_max_s: float = 30.0, stable_after_s: float = 60.0):
        self._runtimes = [_Runtime(config) for config in runtimes]
        self._log = log
        self._popen = popen
        self._log_dir = log_dir
        self._output = output
        self._bound = bound
        self._poll_interval_s = poll_interval_s
        self._backoff = {"first": backoff_first_s, "cap": backoff_max_s,
                         "stable_after": stable_after_s}
        self._lock = threading.Lock()  # guards the _Runtime states
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RuntimeSupervisor":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "RuntimeSupervisor":
        """Launch every runtime and the watcher thread; returns at once, healthy or not."""
        if self._thread is not None:
            raise RuntimeError("runtime supervisor already started")
        self._stopping.clear()
        with self._lock:
            for runtime in self._runtimes:
                self._launch(runtime, time.monotonic())
        self._thread = threading.Thread(target=self._watch, name="inferegator-runtimes",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop restarting, SIGTERM every process group, SIGKILL what is left after ``timeout``.

        Returns once every runtime's process is reaped and its group is empty (or killed).
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            runtimes = list(self._runtimes)
        self._stop(runtimes, timeout)

    def reap(self) -> None:
        """Collect the exit status of each runtime that ended, now. serve's master calls it
        before gunicorn waits for any child, which would take these statuses otherwise; no
        lock (it may run in a signal handler): Popen.poll guards itself."""
        for runtime in list(self._runtimes):
            proc = runtime.proc
            if proc is not None:
                proc.poll()

    def update(self, runtimes: list[RuntimeConfig]) -> list[RuntimeConfig]:
        """A reloaded config's runtimes: those new by name start now; returns those to
        retire() once no worker sends them requests any more (removed, or changed and to
        be restarted with their new settings)."""
        wanted = {config.name: config for config in runtimes}
        with self._lock:
            current = {runtime.config.name: runtime for runtime in self._runtimes}
            for name, config in wanted.items():
                if name not in current:
                    runtime = _Runtime(config)
                    self._runtimes.append(runtime)
                    self._launch(runtime, time.monotonic())
        return [config for name, config in wanted.items()
                if name in current and current[name].config != config] + [
            runtime.config for name, runtime in current.items() if name not in wanted]

    def retire(self, configs: list[RuntimeConfig], wanted: list[RuntimeConfig],
               timeout: float = 10.0) -> None:
        """Stop the runtimes named in ``configs`` (update()'s answer) and start again those
        of them still in ``wanted``, with their new settings."""
        names = {config.name for config in configs}
        with self._lock:
            leaving = [runtime for runtime in self._runtimes if runtime.config.name in names]
            for runtime in leaving:
                runtime.restart_at = None
                self._runtimes.remove(runtime)
        self._stop(leaving, timeout)
        with self._lock:
            for config in wanted:
                if config.name in names:
                    runtime = _Runtime(config)
                    self._runtimes.append(runtime)
                    self._launch(runtime, time.monotonic())

    def _stop(self, runtimes: list, timeout: float) -> None:
        with self._lock:
            running = [runtime for runtime in runtimes if runtime.proc is not None]
            for runtime in runtimes:
                runtime.restart_at = None
        for runtime in running:  # all at once, so they shut down in parallel
            _signal_group(runtime.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for runtime in running:
            proc = runtime.proc
            if not self._wait_group(proc, deadline):
                self._log.warning("runtime %s did not stop within %.1fs; killing it",
                                  runtime.config.name, timeout)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            self._log.info("runtime %s stopped (%s)", runtime.config.name,
                           describe_exit(proc.returncode))
            with self._lock:
                runtime.exit_code, runtime.proc, runtime.healthy = proc.returncode, None, None

    def status(self) -> list[dict]:
        """One dict per runtime: name, pid, running, restarts, healthy, exit_code, error.

        ``healthy`` is the last probe's answer for the current process (None: not probed, or
        no health URL); ``exit_code`` is how its last process ended; ``error`` why its last
        launch failed.
        """
        with self._lock:
            return [{"name": runtime.config.name,
                     "pid": runtime.proc.pid if runtime.proc else None,
                     "running": runtime.proc is not None and runtime.proc.poll() is None,
                     "restarts": runtime.restarts,
                     "healthy": runtime.healthy,
                     "exit_code": runtime.exit_code,
                     "error": runtime.error}
                    for runtime in self._runtimes]

    def wait_healthy(self, timeout: float, interval: float = 0.1) -> bool:
        """Probe every runtime that has a health URL until all answer 200; False on timeout.

        For reporting only (e.g. a "runtimes ready" log line): start() never waits on this.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._probe_all(max(0.1, min(1.0, deadline - time.monotonic()))):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.wait(min(interval, left)):
                return False

    def _probe_all(self, timeout: float) -> bool:
        with self._lock:
            targets = [(runtime, runtime.proc) for runtime in self._runtimes
                       if runtime.health]
        results = []
        for runtime, proc in targets:  # probed outside the lock: a slow answer blocks no one
            healthy = proc is not None and probe(runtime.health, timeout)
            with self._lock:
                if runtime.proc is proc:  # not restarted meanwhile: the answer is about it
                    runtime.healthy = healthy
            results.append(healthy)
        return all(results)

    def _watch(self) -> None:
        """The watcher thread: notice exits and relaunch when a runtime's backoff is over."""
        while not self._stopping.wait(self._poll_interval_s):
            try:
                with self._lock:
                    for runtime in self._runtimes:
                        self._check(runtime, time.monotonic())
            except Exception:  # the watcher must outlive any one bad runtime
                self._log.exception("runtime supervisor: unexpected error")

    def _check(self, runtime: _Runtime, now: float) -> None:
        if runtime.proc is not None:
            code = runtime.proc.poll()
            if code is None:
                return
            # The leader is gone; its workers (gunicorn's, SGLang's schedulers) would keep the
            # port and the GPU memory, and block the restart: kill whatever is left of the group.
            _signal_group(runtime.proc.pid, signal.SIGKILL)
            runtime.proc, runtime.exit_code, runtime.healthy = None, code, None
            decision = self._schedule(runtime, now - runtime.started_at, now)
            self._log.warning("runtime %s exited with %s; %s", runtime.config.name,
                              describe_exit(code), decision)
        elif runtime.restart_at is not None and now >= runtime.restart_at:
            runtime.restart_at = None
            runtime.restarts += 1
            self._launch(runtime, now)

    def _schedule(self, runtime: _Runtime, uptime: float, now: float) -> str:
        """Set the next launch after an exit or a failed launch; says what it decided."""
        if not runtime.config.restart:
            return "not restarting (restart: false)"
        runtime.backoff = next_backoff(runtime.backoff, uptime, **self._backoff)
        runtime.restart_at = now + runtime.backoff
        return f"restarting in {runtime.backoff:.1f}s"

    def _launch(self, runtime: _Runtime, now: float) -> None:
        name = runtime.config.name
        out = None
        try:
            argv, extra_env = launch_spec(runtime.config)
            if self._bound:
                if shutil.which(argv[0]) is None:  # as Popen says it when it execs itself
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
                argv = [sys.executable, "-m", "inferegator.runtime_exec", str(os.getpid()),
                        "--", *argv]
            if self._log_dir:
                out = open(os.path.join(self._log_dir, name.replace(os.sep, "_") + ".log"), "ab")
            # A session of its own: stop() can signal the whole group, and a Ctrl-C at the
            # master's terminal reaches the master only, which then stops runtimes in order.
            runtime.proc = self._popen(argv, env={**os.environ, **extra_env},
                                       stdin=subprocess.DEVNULL,
                                       stdout=out or self._output,
                                       stderr=subprocess.STDOUT if out else None,
                                       start_new_session=True)
        except Exception as exc:  # a missing binary, a bad log dir: report it, keep the others
            runtime.proc, runtime.error = None, str(exc)
            self._log.error("runtime %s could not start: %s; %s", name, exc,
                            self._schedule(runtime, 0.0, now))
            return
        finally:
            if out is not None:
                out.close()  # the child holds its own copy
        runtime.started_at, runtime.error, runtime.healthy = now, None, None
        self._log.info("runtime %s started (pid %d)", name, runtime.proc.pid)

    def _wait_group(self, proc: subprocess.Popen, deadline: float) -> bool:
        """Wait until the leader is reaped and its group is empty; False at the deadline."""
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        while _signal_group(proc.pid, 0):  # its children may outlive it by a moment
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True
