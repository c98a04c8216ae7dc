"""W3C trace context through a real `inferegator serve` to real simulators, which log the
``traceparent`` each request came with; and the spans of the console exporter."""

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inferegator.backends.base import upstream_request_id
from tests.gateway_fixtures import MODEL, gateway_yaml, sdk
from tests.support.processes import BIN, wait_until

MESSAGES = [{"role": "user", "content": "hello"}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
VALID = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def seen_upstream(sim, request_id):
    """(traceparent, tracestate) of the request ``request_id`` in the simulator's access
    log, once it is written ("-" for a header it did not get)."""
    sent = upstream_request_id(request_id)  # the X-Request-ID a backend is sent
    pattern = re.compile(rf"request_id={re.escape(sent)} traceparent=(\S+) "
                         r'tracestate="([^"]*)"')

    def found():
        match = pattern.search(sim.output())
        return match.groups() if match else None
    return wait_until(found, timeout=10)


def logged(gateway, request_id):
    """The gateway's JSON access-log line of ``request_id``, once written."""
    def found():
        for line in gateway.output().splitlines():
            if line.startswith("{") and json.loads(line)["request_id"] == request_id:
                return json.loads(line)
        return None
    return wait_until(found, timeout=10)


def ask(gateway, **headers):
    """A chat request; its X-Request-ID and usage."""
    answer = sdk(gateway).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, extra_headers=headers)
    return answer.headers["X-Request-ID"], answer.parse().usage


def valid_ids(traceparent):
    match = VALID.fullmatch(traceparent)
    assert match, traceparent
    trace_id, span_id, _ = match.groups()
    assert trace_id != "0" * 32 and span_id != "0" * 16
    return match.groups()


def test_client_trace_continued_upstream_and_in_the_access_log(start_sim, start_gateway):
    sim = start_sim("--instant", "--access-log")
    gateway = start_gateway(gateway_yaml([sim]))
    request_id, _ = ask(gateway, traceparent=TRACEPARENT, tracestate="acme=1,other=x")
    traceparent, tracestate = seen_upstream(sim, request_id)
    trace_id, parent_id, flags = valid_ids(traceparent)
    assert (trace_id, flags) == (TRACE_ID, "01")  # the client's trace, sampled as it said
    assert parent_id != CLIENT_SPAN  # the gateway's own span for the attempt is the parent
    assert tracestate == "acme=1,other=x"
    assert logged(gateway, request_id)["trace_id"] == TRACE_ID

    # Not sampled by the client: continued, and still not sampled; a tracestate that is
    # not a list of key=value members is not passed on.
    request_id, _ = ask(gateway, traceparent=f"00-{TRACE_ID}-{CLIENT_SPAN}-00",
                        tracestate="Not A=Valid List")
    traceparent, tracestate = seen_upstream(sim, request_id)
    assert valid_ids(traceparent)[::2] == (TRACE_ID, "00") and tracestate == "-"


MALFORMED = [
    f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01",  # uppercase hex
    f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE_ID}-{CLIENT_SPAN}-01",  # the forbidden version
    f"00-{TRACE_ID}-{CLIENT_SPAN}-01-extra",  # version 00 has nothing after the flags
    f"00-{TRACE_ID}-{CLIENT_SPAN}-1",  # short flags
    "garbage",
]


def test_missing_or_malformed_traceparent_starts_a_new_trace(start_sim, start_gateway):
    sim = start_sim("--instant", "--access-log")
    gateway = start_gateway(gateway_yaml([sim]))
    trace_ids = set()
    for given in [None, *MALFORMED]:
        headers = {} if given is None else {"traceparent": given, "tracestate": "acme=1"}
        request_id, _ = ask(gateway, **headers)
        traceparent, tracestate = seen_upstream(sim, request_id)
        trace_id, _, flags = valid_ids(traceparent)
        assert trace_id != TRACE_ID and flags == "01", given  # a new trace, sampled
        assert tracestate == "-", given  # an invalid parent's tracestate is dropped with it
        assert logged(gateway, request_id)["trace_id"] == trace_id
        trace_ids.add(trace_id)
    assert len(trace_ids) == 1 + len(MALFORMED)


def test_a_later_version_is_read_by_its_first_fields(start_sim, start_gateway):
    sim = start_sim("--instant", "--access-log")
    gateway = start_gateway(gateway_yaml([sim]))
    request_id, _ = ask(gateway, traceparent=f"cc-{TRACE_ID}-{CLIENT_SPAN}-01-what-comes")
    trace_id, parent_id, _ = valid_ids(seen_upstream(sim, request_id)[0])
    assert trace_id == TRACE_ID and parent_id != CLIENT_SPAN


def spans_of(path, trace_id, count):
    """The console exporter's spans of ``trace_id`` in the file, once there are
    ``count``."""
    def found():
        try:
            with open(path) as f:
                spans = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return None
        mine = [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]
        return mine if len(mine) >= count else None
    return wait_until(found, timeout=10)


def test_console_spans_one_per_request_and_per_attempt(start_sim, start_gateway, tmp_path):
    failing = start_sim("--instant", "--access-log", "--fault-500-rate", "1.0")
    good = start_sim("--instant", "--access-log")
    path = tmp_path / "spans.jsonl"
    gateway = start_gateway(gateway_yaml(
        [failing], fallbacks=[good],
        extra=f"tracing: {{exporter: console, endpoint: '{path}', service_name: gw-test}}\n"))
    request_id, usage = ask(gateway, traceparent=TRACEPARENT)

    spans = spans_of(path, TRACE_ID, 3)
    assert len(spans) == 3
    server = next(s for s in spans if s["kind"] == "SpanKind.SERVER")
    attempts = sorted((s for s in spans if s["kind"] == "SpanKind.CLIENT"),
                      key=lambda s: s["attributes"]["inferegator.attempt"])
    assert server["parent_id"] == f"0x{CLIENT_SPAN}"
    assert server["resource"]["attributes"]["service.name"] == "gw-test"
    attributes = server["attributes"]
    assert attributes["inferegator.request_id"] == request_id
    assert (attributes["http.request.method"], attributes["url.path"],
            attributes["http.response.status_code"]) == ("POST", "/v1/chat/completions", 200)
    assert (attributes["gen_ai.request.model"], attributes["inferegator.backend"],
            attributes["inferegator.attempts"]) == (MODEL, f"sglang:{good.url}", 2)
    assert (attributes["gen_ai.usage.input_tokens"], attributes[
        "gen_ai.usage.output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert server["status"]["status_code"] == "UNSET"

    # Each attempt's span is the parent each backend was sent: their spans would join.
    for attempt, sim, result in ((attempts[0], failing, "failed"),
                                 (attempts[1], good, "answered")):
        _, parent_id, _ = valid_ids(seen_upstream(sim, request_id)[0])
        assert attempt["context"]["span_id"] == f"0x{parent_id}"
        assert attempt["parent_id"] == server["context"]["span_id"]
        assert attempt["attributes"]["inferegator.backend"] == f"sglang:{sim.url}"
        assert attempt["attributes"]["inferegator.attempt.result"] == result
        assert server["start_time"] <= attempt["start_time"] <= attempt["end_time"] \
            <= server["end_time"]
    assert attempts[0]["status"]["status_code"] == "ERROR"
    assert attempts[0]["end_time"] <= attempts[1]["start_time"]


def otlp_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        return False


def test_a_span_file_that_cannot_be_written_stops_serve_before_any_worker(start_sim,
                                                                         tmp_path):
    sim = start_sim("--instant")
    path = tmp_path / "bad.yaml"
    path.write_text(gateway_yaml([sim], extra="tracing: {exporter: console, endpoint: "
                                              f"'{tmp_path}/no/such/folder/spans.jsonl'}}\n"))
    checked = subprocess.run([os.path.join(BIN, "inferegator"), "check-config", "--config",
                              str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 2
    assert "tracing.endpoint: cannot append spans to" in checked.stderr
    served = subprocess.run([os.path.join(BIN, "inferegator"), "serve", "--config", str(path),
                             "--bind", "127.0.0.1:0"], capture_output=True, text=True,
                            timeout=60)
    assert served.returncode == 2 and served.stderr == checked.stderr
    assert "Booting worker" not in served.stdout + served.stderr


@contextlib.contextmanager
def otlp_collector():
    """An OTLP/HTTP receiver on a free port: (its traces URL, the export requests it got,
    decoded)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()


def exported(received, trace_id, count):
    """(service name, span) of each span of ``trace_id`` received, once there are
    ``count``."""
    def found():
        spans = [(resource.resource.attributes, span) for request in list(received)
                 for resource in request.resource_spans for scope in resource.scope_spans
                 for span in scope.spans if span.trace_id.hex() == trace_id]
        return spans if len(spans) >= count else None
    return wait_until(found, timeout=15)


@pytest.mark.skipif(not otlp_installed(),
                    reason="needs opentelemetry-exporter-otlp-proto-http (the tracing extra)")
def test_otlp_spans_reach_a_collector(start_sim, start_gateway):
    sim = start_sim("--instant", "--access-log")
    with otlp_collector() as (url, received):
        gateway = start_gateway(
            gateway_yaml([sim], extra=f"tracing: {{exporter: otlp, endpoint: '{url}'}}\n"),
            env={"OTEL_BSP_SCHEDULE_DELAY": "50"})  # ms between the batches' exports
        request_id, _ = ask(gateway, traceparent=TRACEPARENT)
        spans = exported(received, TRACE_ID, 2)
    assert len(spans) == 2
    resource, server = next((r, s) for r, s in spans if s.name.startswith("POST "))
    _, attempt = next((r, s) for r, s in spans if s.name.startswith("upstream "))
    assert {a.key: a.value.string_value for a in resource}["service.name"] == "inferegator"
    assert server.parent_span_id.hex() == CLIENT_SPAN
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["inferegator.request_id"].string_value == request_id
    assert attributes["http.response.status_code"].int_value == 200
    assert attempt.parent_span_id == server.span_id
    assert attempt.span_id.hex() == valid_ids(seen_upstream(sim, request_id)[0])[1]
