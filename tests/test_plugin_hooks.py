"""The request-path hooks seen from a plugin, in-process: an edit before the backend call,
a rewrite after it, one request_finished per request, and a plugin's exception answered
as a clean 500 that still gives the backend back and writes its one ledger row."""

import types

import falcon.testing
import pytest

from inferegator.config import parse_config
from inferegator.factory import build_gateway
from inferegator.plugin import hookimpl
from inferegator.store.store import Store

MODEL = "acme/sim-chat"


class Recorder:
    """A third-party plugin, given in code: edits, rewrites and counts."""

    def __init__(self):
        self.finished, self.streams, self.fail = [], 0, False

    @hookimpl
    def inferegator_before_upstream(self, request, body, headers):
        if self.fail:
            raise RuntimeError("a plugin bug")
        body["max_tokens"] = 2
        headers["X-Audit"] = "yes"

    @hookimpl
    def inferegator_after_upstream(self, backend, answer):
        if answer is None:
            self.streams += 1
        else:
            answer["audited_by"] = backend.name

    @hookimpl
    def inferegator_request_finished(self, outcome):
        self.finished.append((outcome.request_id, outcome.status, outcome.http_status))


@pytest.fixture
def rig(sim, tmp_path):
    config = parse_config(f"""
storage: sqlite:///{tmp_path}/store.db
models:
  - id: {MODEL}
    backends: [{{type: sglang, url: '{sim.url}', model: sim-model}}]
""", path=str(tmp_path / "gateway.yaml"))
    store = Store(config.storage)
    user = store.accounts.create_user("dev@example.com", "correct horse battery")
    key, _ = store.accounts.create_key(user["id"], "test")
    recorder = Recorder()
    gateway = build_gateway(config, store=store, plugins=[recorder])
    client = falcon.testing.TestClient(gateway.app)
    yield types.SimpleNamespace(gateway=gateway, client=client, recorder=recorder,
                                auth={"Authorization": f"Bearer {key}"})
    gateway.close()


def chat(rig, **extra):
    return rig.client.simulate_post("/v1/chat/completions", headers=rig.auth, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 50, **extra})


def test_before_and_after_upstream_edit_the_request_and_the_answer(rig):
    answer = chat(rig)
    assert answer.status_code == 200
    assert answer.json["usage"]["completion_tokens"] <= 2  # the edited max_tokens arrived
    assert answer.json["audited_by"].startswith("sglang:")
    assert answer.json["model"] == MODEL
    stream = chat(rig, stream=True)
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    assert rig.recorder.streams == 1
    assert [status for _, status, _ in rig.recorder.finished] == ["completed", "completed"]


def test_a_plugin_exception_is_a_clean_500_with_one_row_and_nothing_held(rig):
    rig.recorder.fail = True
    answer = chat(rig)
    assert answer.status_code == 500
    assert answer.json["error"]["code"] == "internal_error"
    assert "plugin bug" not in answer.text
    assert rig.recorder.finished[-1][1:] == ("failed", 500)
    assert all(b.in_flight == 0 for b in rig.gateway.catalog.backends())
    assert all(b.breaker.state == "closed" for b in rig.gateway.catalog.backends())
    rig.gateway.store.ledger.flush()
    rows = rig.gateway.store.db.query("SELECT status, http_status FROM usage_ledger")
    assert rows == [{"status": "failed", "http_status": 500}]
