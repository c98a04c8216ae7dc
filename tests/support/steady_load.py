"""A steady load of JSON and streamed chat requests from threads, as `openai` clients send it,
counting every answer and every failure (for reload, shutdown and fleet tests)."""

import threading

import openai


class SteadyLoad:
    """``threads`` clients, half JSON and half streaming, each sending requests one after
    another to ``base_url`` until stop(); ``model`` may be a callable (read per request).

    The clients keep the SDK's default retries, as an application's would: a connection
    closed under a request just sent is retried, an answered error is not (except the
    SDK's 5xx/429 retries, which count as one request).
    """

    def __init__(self, base_url: str, key: str, model, threads: int = 4,
                 max_tokens: int = 8, stream_every: int = 2):
        self.base_url, self.key, self.model = base_url, key, model
        self.max_tokens = max_tokens
        self.answered: list[str] = []  # request ids of the answers received whole
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i % stream_every == 1,),
                                          daemon=True) for i in range(threads)]

    def __enter__(self) -> "SteadyLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait_answers(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` more answers came (progress, not time, paces the tests)."""
        from tests.support.processes import wait_until

        target = len(self.answered) + count
        wait_until(lambda: len(self.answered) >= target or self.failures, timeout)

    def _client(self, streaming: bool) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key=self.key, timeout=30)
        while not self._stop.is_set():
            model = self.model() if callable(self.model) else self.model
            messages = [{"role": "user", "content": "Say something."}]
            try:
                if streaming:
                    raw = client.chat.completions.with_raw_response.create(
                        model=model, messages=messages, max_tokens=self.max_tokens,
                        stream=True, stream_options={"include_usage": True})
                    request_id = raw.headers["x-request-id"]
                    chunks = list(raw.parse())
                    if chunks[-1].usage is None or not any(
                            c.choices and c.choices[0].finish_reason for c in chunks):
                        raise AssertionError(f"stream {request_id} ended early")
                else:
                    raw = client.chat.completions.with_raw_response.create(
                        model=model, messages=messages, max_tokens=self.max_tokens)
                    request_id = raw.headers["x-request-id"]
                    assert raw.parse().choices[0].message.content is not None
                with self._lock:
                    self.answered.append(request_id)
            except Exception as exc:  # every failure is a finding: keep it, keep going
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
