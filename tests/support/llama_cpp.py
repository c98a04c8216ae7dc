"""llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) as a real
third-party backend, serving the tiny GGUF model of tests/support/tiny_gguf.py."""

import re
import sys

from tests.support.processes import ServerProcess, free_port

# uvicorn's access log line: 127.0.0.1:40000 - "POST /v1/chat/completions HTTP/1.1" 200 OK
_ACCESS = re.compile(r'"(GET|POST) (\S+) HTTP/[\d.]+" (\d{3})')


class LlamaCppServer(ServerProcess):
    """The server on a free port, ready once its /v1/models answers 200.

    ``--interrupt_requests false``: by default the server ends a stream early (with
    ``[DONE]`` and no finish_reason) as soon as any other request waits for the model, and
    its GET /v1/models waits for the model too, so a gateway's health probe arriving
    mid-stream would cut that stream short.
    """

    def __init__(self, model_path, alias: str = "tiny", n_ctx: int = 512, threads: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.alias = alias
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
                "--model_alias", alias, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                "--n_threads_batch", str(threads), "--interrupt_requests", "false",
                "--verbose", "false"]
        super().__init__(argv, self.url + "/v1/models", ready_timeout=60)

    def requests_seen(self, method: str = "POST") -> list[tuple[str, int]]:
        """(path, status) of each request with this method the server logged, in order."""
        return [(path, int(status)) for verb, path, status in _ACCESS.findall(self.output())
                if verb == method]
