"""A private nginx (Debian's binary) load-balancing gateway replicas, as docs/operations.md
configures it: retries a request whose replica failed before answering on the other one.

It runs in the foreground as a child of the test (``daemon off``), with its prefix, config,
pid file, logs and temporary folders in a temp dir, on a free port; as root it runs as
``nobody``. Its access log names the upstream(s) each request went to, so a test can see
which replica answered and which requests were retried.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile

from .processes import free_port, wait_until

# Each line: status, the upstream(s) tried ("a, b" when retried), their statuses, the
# request id the gateway answered with, the request line.
LOG_FORMAT = ('$status "$upstream_addr" "$upstream_status" "$upstream_http_x_request_id" '
              '"$request"')

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    log_format fleet '{log_format}';
    access_log {dir}/access.log fleet;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream inferegator {{
{servers}
        keepalive 64;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 10m;

        location = /metrics {{
            return 404;  # each replica's own: scraped from it, never through the balancer
        }}

        location / {{
            proxy_pass http://inferegator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_connect_timeout 2s;
            proxy_send_timeout 60s;
            proxy_read_timeout 600s;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_next_upstream_timeout 30s;
        }}
    }}
}}
"""


def _binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(found):
        raise RuntimeError("nginx not found: apt-get install nginx-light (or nginx)")
    return found


class Nginx:
    """nginx on a free port in front of ``upstreams`` (host:port each); .stop() ends it."""

    def __init__(self, upstreams, max_fails=1, fail_timeout_s=5):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="inferegator-nginx-")
        servers = "\n".join(f"        server {u} max_fails={max_fails} "
                            f"fail_timeout={fail_timeout_s}s;" for u in upstreams)
        self.config_path = os.path.join(self.dir, "nginx.conf")
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(dir=self.dir, port=self.port, servers=servers,
                                  log_format=LOG_FORMAT))
        as_user = {}
        if os.geteuid() == 0:  # never serve as root: nginx and its worker run as nobody
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        # -e: the error log from the start (before the config is read, nginx would try
        # /var/log/nginx); -p: the prefix, so nothing outside the temp dir is used.
        self.proc = subprocess.Popen(
            [_binary(), "-p", self.dir, "-c", self.config_path,
             "-e", os.path.join(self.dir, "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **as_user)
        wait_until(self._listening, timeout=20, interval=0.02)

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.errors()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def errors(self) -> str:
        """nginx's error log (warnings included)."""
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def access_log(self) -> list[dict]:
        """One dict per request logged so far: status, upstreams (a list, in the order
        tried), upstream_statuses, request_id, request."""
        entries = []
        try:
            with open(os.path.join(self.dir, "access.log"), errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return entries
        for line in lines:
            status, _, rest = line.partition(" ")
            fields = rest.split('" "')
            upstreams, statuses, request_id, request = (x.strip('"') for x in fields)
            entries.append({"status": int(status),
                            "upstreams": [u.strip() for u in upstreams.split(",")],
                            "upstream_statuses": [s.strip() for s in statuses.split(",")],
                            "request_id": request_id, "request": request})
        return entries

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
