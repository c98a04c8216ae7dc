"""A private redis-server (Debian's binary) on a free port or a unix socket, without
persistence."""

import os
import shutil
import subprocess
import tempfile

from .processes import free_port, wait_until


class RedisServer:
    def __init__(self, unix_socket: bool = False):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.dir = tempfile.mkdtemp(prefix="inferegator-redis-")
        self.socket = os.path.join(self.dir, "redis.sock") if unix_socket else None
        self.port = 0 if unix_socket else free_port()
        listen = ["--unixsocket", self.socket] if unix_socket else ["--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), *listen, "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        self.client = redis.Redis(unix_socket_path=self.socket) if unix_socket \
            else redis.Redis(port=self.port)

        def answers():
            try:
                return self.client.ping()
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError("redis-server exited") from None
                return False

        wait_until(answers, timeout=20, interval=0.02)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}" if self.socket else f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
