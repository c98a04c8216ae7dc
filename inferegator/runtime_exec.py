"""Exec a runtime bound to the gateway's master: ``python -m inferegator.runtime_exec PID -- ARGV``.

The runtime must not outlive the master, even one ended by SIGKILL with nobody left to stop
it. Linux's ``PR_SET_PDEATHSIG`` survives exec: set here, in the child and before the exec,
the kernel kills the runtime when the master's thread that started it ends. (A
``preexec_fn`` could set it too, but is unsafe in a master that runs threads.) The
runtime's own children are its business: gunicorn's workers (the simulator's) leave when
their parent changes, SGLang's schedulers set the same flag on themselves.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def bind_to_parent(parent: int) -> bool:
    """Ask for SIGKILL when the parent ends; False when it has ended already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop() remains
        pass
    return os.getppid() == parent


def main(argv: list[str]) -> int:
    parent, separator, command = argv[0], argv[1], argv[2:]
    if separator != "--" or not command:
        print("usage: python -m inferegator.runtime_exec PARENT_PID -- COMMAND ...",
              file=sys.stderr)
        return 2
    if not bind_to_parent(int(parent)):
        return 1  # the master died before the flag was set: nothing must start
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"inferegator: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
