"""Background work in a worker: a greenlet that calls ``work()`` every ``interval()`` seconds.

A failing call is logged and the loop goes on; the loop never ends on its own.
"""

import logging

import gevent

log = logging.getLogger("inferegator")


def every(interval, work, what: str, at_once: bool = False):
    """Start the loop (``at_once``: the first call before the first pause); ``interval``
    is a callable, so the pause may change; returns the greenlet, to kill when stopping."""

    def loop():
        if not at_once:
            gevent.sleep(interval())
        while True:
            try:
                work()
            except Exception:  # a bug here must not end the loop
                log.exception("%s failed", what)
            gevent.sleep(interval())

    return gevent.spawn(loop)
