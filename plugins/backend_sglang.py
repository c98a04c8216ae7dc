"""The ``sglang`` backend type: an SGLang runtime's OpenAI endpoints and its own health/info."""

import requests

from inferegator.plugin import BackendAdapter, hookimpl

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
          "embeddings": "/v1/embeddings", "responses": "/v1/responses",
          "generate": "/generate", "rerank": "/v1/rerank", "score": "/v1/score"}


class SGLangBackend(BackendAdapter):
    """``url`` is the runtime's root, e.g. http://gpu-a:30000."""

    type_name = "sglang"
    paths = _PATHS
    supports_continuous_usage = True

    def health_url(self) -> str:
        return self.url + "/health"

    def flush_cache(self) -> bool:
        """POST /flush_cache: True when the runtime dropped its prefix cache."""
        try:
            resp = self.session.post(self.url + "/flush_cache", headers=self.auth_headers(),
                                     timeout=self.timeout)
            resp.close()
            return resp.status_code == 200
        except requests.RequestException:
            return False

    def poll_load(self) -> dict | None:
        """num_running_reqs + num_waiting_reqs from /v1/loads (older runtimes: /get_load),
        the token capacity of its KV cache (max_total_num_tokens) and its running slots
        (max_running_requests) where reported."""
        try:
            resp = self.session.get(self.url + "/v1/loads", params={"include": "core"},
                                    timeout=1.0)
            if resp.status_code == 200:
                ranks = resp.json().get("loads") or []
                return {"running": sum(r.get("num_running_reqs", 0) for r in ranks),
                        "waiting": sum(r.get("num_waiting_reqs", 0) for r in ranks),
                        "capacity_tokens": sum(r.get("max_total_num_tokens") or 0
                                               for r in ranks) or None,
                        "slots": sum(r.get("max_running_requests") or 0
                                     for r in ranks) or None}
            resp = self.session.get(self.url + "/get_load", timeout=1.0)
            if resp.status_code == 200:
                ranks = resp.json()
                return {"running": sum(r.get("num_reqs", 0) for r in ranks), "waiting": 0}
        except (requests.RequestException, ValueError, AttributeError, TypeError):
            pass
        return None

    def discover(self) -> dict:
        """context_length and max_running_requests from /server_info (older: /get_server_info)."""
        for path in ("/server_info", "/get_server_info"):
            try:
                resp = self.session.get(self.url + path, timeout=5)
            except requests.RequestException:
                return {}
            if resp.status_code == 200:
                info = resp.json()
                return {k: info[k] for k in ("context_length", "max_running_requests")
                        if isinstance(info.get(k), int)}
        return {}


@hookimpl(trylast=True)
def inferegator_register_backends():
    return {"sglang": SGLangBackend}
