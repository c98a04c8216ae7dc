"""Lua scripts run in Redis: by EVALSHA over PipelinedRedis (redis://, unix://) or over
redis-py (rediss://), loaded again when Redis has forgotten them (NOSCRIPT).

Shared by the stores that keep their state in Redis: the rate limiter's windows and the
routing prefix index.
"""

import hashlib
import pathlib
from dataclasses import dataclass

from .ratelimit.resp import PipelinedRedis, RedisReplyError


class StoreUnavailable(Exception):
    """The shared store (Redis) could not be reached."""


@dataclass(frozen=True)
class Script:
    """A Lua script, by the SHA1 that EVALSHA names it with."""

    text: str
    sha: str

    @classmethod
    def load(cls, folder: pathlib.Path, name: str) -> "Script":
        text = (folder / name).read_text()
        return cls(text, hashlib.sha1(text.encode()).hexdigest())


def open_scripts(url: str, scripts, timeout_s: float, pipelined: bool | None = None):
    """A runner of ``scripts`` (``run`` waits for the reply, ``send`` need not) for a
    redis://, unix:// or rediss:// URL; redis-py for TLS or when ``pipelined`` is False."""
    tls = url.partition("://")[0].lower() == "rediss"
    if pipelined is None:
        pipelined = not tls
    elif pipelined and tls:
        raise ValueError("PipelinedRedis does not speak TLS (rediss://)")
    return (PipelinedScripts if pipelined else RedisPyScripts)(url, scripts, timeout_s)


class PipelinedScripts:
    """Scripts over PipelinedRedis (redis://, unix://): one shared connection per process.

    ``run`` waits for the reply, ``send`` does not. A script Redis has not cached (after
    a restart or SCRIPT FLUSH: a NOSCRIPT error) is loaded and run again once; a sent one
    is sent again as EVAL with its text instead (from the hub, where nothing may wait).
    """

    def __init__(self, url: str, scripts, timeout_s: float):
        self.client = PipelinedRedis(url, timeout_s)
        self._texts = {script.sha: script.text for script in scripts}

    def run(self, script: Script, keys: list, args: list) -> list:
        call = self.client.call
        try:
            try:
                return call("EVALSHA", script.sha, len(keys), *keys, *args)
            except RedisReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                call("SCRIPT", "LOAD", script.text)
                return call("EVALSHA", script.sha, len(keys), *keys, *args)
        except (RedisReplyError, OSError) as exc:  # RedisUnavailable is an OSError
            raise StoreUnavailable(str(exc)) from None

    def command(self, *args):
        """One plain command (DEL, ...), waited for."""
        try:
            return self.client.call(*args)
        except (RedisReplyError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from None

    def send_command(self, *args) -> None:
        """One plain command, not waited for (an error reply is logged by the client)."""
        try:
            self.client.send(*args)
        except OSError as exc:
            raise StoreUnavailable(str(exc)) from None

    def send(self, script: Script, keys: list, args: list) -> None:
        try:
            self.client.send("EVALSHA", script.sha, len(keys), *keys, *args,
                             on_error=self._resend)
        except OSError as exc:
            raise StoreUnavailable(str(exc)) from None

    def _resend(self, error, command) -> bool:
        if not str(error).startswith("NOSCRIPT"):
            return False  # logged by the client
        self.client.send("EVAL", self._texts[command[1]], *command[2:])
        return True

    def close(self) -> None:
        self.client.close()


class RedisPyScripts:
    """Scripts over redis-py (rediss://, which PipelinedRedis does not speak): a bounded
    pool of blocking connections; ``send`` waits for its reply too."""

    def __init__(self, url: str, scripts, timeout_s: float):
        import redis

        # Bounded: a stalled Redis must not make each worker open a connection per request.
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=timeout_s,
                                                     socket_timeout=timeout_s,
                                                     socket_connect_timeout=timeout_s)
        self.client = redis.Redis(connection_pool=pool)
        self._errors = (redis.RedisError, OSError)  # incl. the pool's wait timing out
        # redis-py's Script runs EVALSHA, and on NOSCRIPT loads the script and runs it again
        self._scripts = {script: self.client.register_script(script.text)
                         for script in scripts}

    def run(self, script: Script, keys: list, args: list) -> list:
        try:
            return self._scripts[script](keys=keys, args=args)
        except self._errors as exc:
            raise StoreUnavailable(str(exc)) from None

    send = run

    def command(self, *args):
        """One plain command (DEL, ...), waited for."""
        try:
            return self.client.execute_command(*args)
        except self._errors as exc:
            raise StoreUnavailable(str(exc)) from None

    send_command = command

    def close(self) -> None:
        self.client.close()
