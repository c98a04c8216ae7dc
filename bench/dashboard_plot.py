#!/usr/bin/env python3
"""The Grafana dashboard of docs/grafana-dashboard.json, drawn with matplotlib from the
metrics of a real bench run: docs/grafana-dashboard.png.

One run starts a private redis-server, two simulators (`steady`, and `flaky`, which answers
a quarter of its requests with 503) and `inferegator serve` with two workers in front of
both (Redis limiter, SQLite ledger), then for about 70 seconds drives chat completions as
JSON and as streams with one key, and with a second key whose small limits draw 429s. On
the way, redis-server is stopped for 4 s (SIGSTOP: the limiter times out and, with
`on_store_error: open`, admits) and the flaky simulator is killed (its circuit opens, its
health checks fail). /metrics is scraped every second meanwhile.

Each panel is the dashboard's own (its title, in its place), computed from the scrapes as
Prometheus would: rate() over a 5 s window, histogram_quantile() over the buckets' rates,
sum by the panel's labels. The script refuses to draw if the dashboard's panel titles are
not the ones it knows. The scrapes are kept under bench/out/ (git-ignored); `--replot FILE`
draws them again without a run.

Usage (from the repository root):
  .venv/bin/python bench/dashboard_plot.py
  .venv/bin/python bench/dashboard_plot.py --replot bench/out/dashboard-<time>.json
"""

import argparse
import datetime
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from inferegator.store.store import Store  # noqa: E402
from tests.support.processes import GatewayServer, Simulator  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
PICTURE = ROOT / "docs" / "grafana-dashboard.png"
OUT_DIR = BENCH_DIR / "out"
MODEL = "acme/sim-chat"
WINDOW_S = 5.0  # rate() window: Grafana's $__rate_interval at a 1 s scrape is 4 s
REDIS_STOP = (25.0, 29.0)  # seconds into the run: redis-server is paused
FLAKY_KILLED = 45.0
DURATION_S = 70.0


# -- the run ----------------------------------------------------------------------------

def gateway_yaml(steady, flaky, storage: str, redis_url: str) -> str:
    return "\n".join([
        "server: {health_check_interval_s: 1.0}",
        f"storage: '{storage}'",
        f"ratelimit: {{store: '{redis_url}', on_store_error: open, "
        "requests_per_minute: 1000000, tokens_per_minute: 1000000000}",
        "resilience: {breaker_failures: 3, breaker_open_s: 3}",
        "console: {enabled: false}",
        "models:",
        f"  - id: {MODEL}",
        "    owned_by: acme",
        "    pricing: {prompt: 1.0, completion: 2.0, cached_prompt: 0.5}",
        "    capabilities: [chat, completions, streaming]",
        "    backends:",
        *(f"      - {{type: sglang, url: '{sim.url}', model: sim-model}}"
          for sim in (steady, flaky)),
    ]) + "\n"


def provision(storage: str) -> tuple[str, str]:
    """Two keys: one with the config's (high) limits, one with small ones."""
    store = Store(storage)
    try:
        user = store.accounts.create_user("bench@example.com", "bench password 123")
        main = store.accounts.create_key(user["id"], "main")[0]
        small = store.accounts.create_key(user["id"], "small", requests_per_minute=40,
                                          tokens_per_minute=20000)[0]
        return main, small
    finally:
        store.db.close()


SYSTEM = ("You are the assistant of a bench run. " * 40).strip()  # shared: cached blocks


def prompt(rng, longest: int = 400) -> list:
    words = " ".join(rng.choice(("cache", "token", "gateway", "prefix", "route", "model"))
                     for _ in range(rng.randint(5, longest)))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Summarise: {words}"}]


def keep_going(client):
    """A client loop that outlives a failed request (the run goes on; its errors show in
    the metrics)."""
    def loop(url, key, stop, rng, *args):
        while not stop.is_set():
            try:
                client(url, key, stop, rng, *args)
            except requests.RequestException:
                stop.wait(0.1)
    return loop


@keep_going
def json_client(url, key, stop, rng, pause_s):
    session = requests.Session()
    while not stop.is_set():
        session.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                     json={"model": MODEL, "messages": prompt(rng),
                           "max_tokens": rng.randint(4, 24)}, timeout=30)
        stop.wait(pause_s)


@keep_going
def stream_client(url, key, stop, rng):
    session = requests.Session()
    while not stop.is_set():
        with session.post(url + "/v1/chat/completions",
                          headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=30,
                          json={"model": MODEL, "messages": prompt(rng), "stream": True,
                                "max_tokens": rng.randint(20, 80)}) as resp:
            for _ in resp.iter_lines():
                pass


@keep_going
def small_key_client(url, key, stop, rng):
    """About 2 requests a second against 40 a minute; one in six asks more tokens than
    the key may ever use in a minute."""
    session = requests.Session()
    n = 0
    while not stop.is_set():
        n += 1
        session.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                     json={"model": MODEL, "messages": prompt(rng, 20),
                           "max_tokens": 25000 if n % 6 == 0 else 8}, timeout=30)
        stop.wait(0.5)


def run(args) -> dict:
    started = []
    folder = tempfile.mkdtemp(prefix="inferegator-dashboard-")
    try:
        redis = RedisServer()
        started.append(redis)
        steady = Simulator("--decode-ms-per-token", "15", "--output-tokens-max", "60")
        started.append(steady)
        flaky = Simulator("--decode-ms-per-token", "15", "--output-tokens-max", "60",
                          "--fault-503-rate", "0.25")
        started.append(flaky)
        storage = f"sqlite:///{folder}/store.db"
        main_key, small_key = provision(storage)
        gateway = GatewayServer(folder, gateway_yaml(steady, flaky, storage, redis.url),
                                "--workers", "2")
        started.append(gateway)
        stop = threading.Event()
        clients = [threading.Thread(target=json_client, daemon=True,
                                    args=(gateway.url, main_key, stop, random.Random(i), 0.02))
                   for i in range(args.json_clients)]
        clients += [threading.Thread(target=stream_client, daemon=True,
                                     args=(gateway.url, main_key, stop, random.Random(100 + i)))
                    for i in range(args.stream_clients)]
        clients.append(threading.Thread(target=small_key_client, daemon=True,
                                        args=(gateway.url, small_key, stop,
                                              random.Random(200))))
        scrapes, events = [], []
        t0 = time.monotonic()
        for client in clients:
            client.start()
        done = set()  # the events that happened
        while (now := time.monotonic() - t0) < args.duration:
            text = requests.get(gateway.url + "/metrics", timeout=10).text
            scrapes.append((round(now, 3), text))
            for name, when, act in (
                    ("redis paused", REDIS_STOP[0],
                     lambda: os.kill(redis.proc.pid, signal.SIGSTOP)),
                    ("redis resumed", REDIS_STOP[1],
                     lambda: os.kill(redis.proc.pid, signal.SIGCONT)),
                    ("flaky killed", FLAKY_KILLED, flaky.stop)):
                if name not in done and now >= when:
                    act()
                    done.add(name)
                    events.append((now, name))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - now)))
        stop.set()
        for client in clients:
            client.join(timeout=30)
        names = {f"sglang:{steady.url}": "steady", f"sglang:{flaky.url}": "flaky"}
        return {"scrapes": scrapes, "events": events, "backends": names,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    finally:
        for server in reversed(started):
            try:
                if isinstance(server, RedisServer) and server.proc.poll() is None:
                    os.kill(server.proc.pid, signal.SIGCONT)
                server.stop()
            except Exception as exc:  # keep stopping the others
                print(f"# stopping {server} failed: {exc}", file=sys.stderr)


# -- PromQL, as far as the dashboard uses it ----------------------------------------------

class Series:
    """Every scrape's samples: [(name, labels, value)] per scrape, with their times."""

    def __init__(self, record: dict):
        self.times = [t for t, _ in record["scrapes"]]
        self.samples = [[(s.name, s.labels, s.value)
                         for family in text_string_to_metric_families(text)
                         for s in family.samples] for _, text in record["scrapes"]]
        self.backends = record["backends"]

    def select(self, name: str, by=(), **match) -> dict:
        """{group: [value per scrape]}: sum by ``by`` of the samples called ``name`` whose
        labels match (a value, or a callable on the value); None where no sample was."""
        groups: dict = {}
        for i, samples in enumerate(self.samples):
            for n, labels, v in samples:
                if n != name or not all(
                        (w(labels.get(k)) if callable(w) else labels.get(k) == w)
                        for k, w in match.items()):
                    continue
                group = tuple(labels.get(k, "") for k in by)
                values = groups.setdefault(group, [None] * len(self.samples))
                values[i] = (values[i] or 0.0) + v
        return groups

    def rate(self, name: str, by=(), **match) -> dict:
        """rate(name[WINDOW_S]) summed by ``by``: a counter absent before counts from 0."""
        out = {}
        for group, values in self.select(name, by, **match).items():
            values = [v or 0.0 for v in values]
            rates = []
            j = 0
            for i, t in enumerate(self.times):
                while self.times[j] < t - WINDOW_S:
                    j += 1
                span = t - self.times[j]
                rates.append(max(values[i] - values[j], 0.0) / span if span > 0 else None)
            out[group] = rates
        return out

    def quantile(self, q: float, histogram: str, **match) -> list:
        """histogram_quantile(q, sum by (le) (rate(histogram_bucket[WINDOW_S])))."""
        buckets = self.rate(histogram + "_bucket", ("le",), **match)
        bounds = sorted(buckets, key=lambda g: float(g[0]))
        out = []
        for i in range(len(self.times)):
            counts = [(float(b[0]), buckets[b][i]) for b in bounds]
            total = counts[-1][1] if counts else None
            if not total:
                out.append(None)
                continue
            rank, lower, below = q * total, 0.0, 0.0
            value = None
            for upper, cumulative in counts:
                if cumulative >= rank:
                    if upper == float("inf"):
                        value = lower  # Prometheus: the highest finite bound
                    else:
                        inside = cumulative - below
                        value = lower + (upper - lower) * ((rank - below) / inside
                                                           if inside else 0.0)
                    break
                lower, below = upper, cumulative
            out.append(value)
        return out

    def backend(self, label: str) -> str:
        return self.backends.get(label, label)


def _quantiles(histogram, **match):
    return lambda s: [(f"p{int(q * 100)}", s.quantile(q, histogram, **match))
                      for q in (0.5, 0.95, 0.99)]


def _by(groups: dict, legend) -> list:
    return [(legend(group), values) for group, values in sorted(groups.items())]


def _single(name: str, legend: str, rate: bool = True):
    def panel(s):
        groups = (s.rate if rate else s.select)(name)
        return [(legend, groups.get((), [None] * len(s.times)))]
    return panel


# Panel title -> [(legend, values per scrape)], as the dashboard's queries say.
PANELS = {
    "Requests per second by status code": lambda s: _by(
        s.rate("inferegator_requests_total", ("code",)), lambda g: g[0]),
    "Request latency (p50, p95, p99)": _quantiles(
        "inferegator_request_duration_seconds", backend=lambda b: b != "none"),
    "Time to first token (p50, p95, p99)": _quantiles(
        "inferegator_time_to_first_token_seconds"),
    "Inter-token gap (p50, p95, p99)": _quantiles("inferegator_inter_token_gap_seconds"),
    "Tokens per second": lambda s: [
        (legend, s.rate(name).get((), [None] * len(s.times)))
        for legend, name in (("prompt", "inferegator_prompt_tokens_total"),
                             ("cached prompt", "inferegator_cached_prompt_tokens_total"),
                             ("completion", "inferegator_completion_tokens_total"))],
    "Cost (USD per hour)": lambda s: [
        (g[0], [None if v is None else v * 3600 for v in values])
        for g, values in sorted(s.rate("inferegator_cost_usd_total", ("model",)).items())],
    "Rate-limit refusals per second by kind": lambda s: _by(
        s.rate("inferegator_ratelimit_refusals_total", ("kind",)), lambda g: g[0]),
    "Upstream attempts per second by result": lambda s: _by(
        s.rate("inferegator_upstream_attempts_total", ("result",)), lambda g: g[0]),
    "Backends in rotation (workers)": lambda s: _by(
        s.select("inferegator_backend_healthy", ("backend",)), lambda g: s.backend(g[0]))
    + [("workers", s.select("inferegator_workers").get((), []))],
    "Circuits not closed (workers)": lambda s: _by(
        s.select("inferegator_backend_circuit_state", ("backend", "state"),
                 state=lambda v: v != "closed"), lambda g: f"{s.backend(g[0])} {g[1]}"),
    "In flight by backend": lambda s: _by(
        s.select("inferegator_backend_in_flight", ("backend",)), lambda g: s.backend(g[0])),
    "Runtime-reported load": lambda s: _by(
        s.select("inferegator_backend_reported_requests", ("backend", "state")),
        lambda g: f"{s.backend(g[0])} {g[1]}"),
    "Streams open": _single("inferegator_streams_open", "streams", rate=False),
    "Retries and failovers per second": lambda s: [
        ("retries", s.rate("inferegator_upstream_retries_total").get((), [])),
        ("failovers", s.rate("inferegator_upstream_failovers_total").get((), []))],
    "Ledger queue and flush latency": lambda s: [
        ("rows queued", s.select("inferegator_ledger_queue_rows").get((), [])),
        ("flush p99 (s)", s.quantile(0.99, "inferegator_ledger_flush_seconds"))],
    "Limiter store errors per second": _single("inferegator_ratelimit_store_errors_total",
                                               "errors"),
}


# -- drawing --------------------------------------------------------------------------------

def plot(record: dict, dashboard: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    titles = [p["title"] for p in panels]
    if sorted(titles) != sorted(PANELS):
        raise SystemExit(f"the dashboard's panels are not the ones drawn here:\n"
                         f"  only in the dashboard: {sorted(set(titles) - set(PANELS))}\n"
                         f"  only here: {sorted(set(PANELS) - set(titles))}")
    series = Series(record)
    times = series.times
    columns = 24 // panels[0]["gridPos"]["w"]
    rows = -(-len(panels) // columns)
    background, panel_colour, text = "#111217", "#181b1f", "#ccccdc"
    plt.rcParams.update({"font.size": 7, "text.color": text, "axes.labelcolor": text,
                         "xtick.color": text, "ytick.color": text,
                         "axes.edgecolor": "#2c3235"})
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.7 * rows), dpi=80,
                             facecolor=background)
    colours = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff"]
    for ax, panel in zip(axes.flat, panels):
        ax.set_facecolor(panel_colour)
        ax.set_title(panel["title"], loc="left", fontsize=8, color=text)
        ax.grid(color="#2c3235", linewidth=0.5)
        lines = PANELS[panel["title"]](series)
        twin = ax.twinx() if panel["title"].startswith("Ledger") else None
        for i, (legend, values) in enumerate(lines):
            target = twin if twin is not None and legend.startswith("flush") else ax
            xs = [t for t, v in zip(times, values) if v is not None]
            ys = [v for v in values if v is not None]
            target.plot(xs, ys, color=colours[i % len(colours)], linewidth=1, label=legend)
            target.fill_between(xs, ys, color=colours[i % len(colours)], alpha=0.08)
        for when, _ in record["events"]:
            ax.axvline(when, color="#6e7073", linewidth=0.6, linestyle="--")
        ax.set_xlim(0, times[-1])
        ax.set_ylim(bottom=0)
        if twin is not None:
            twin.set_ylim(bottom=0)
            twin.tick_params(colors=text)
        handles = ax.get_legend_handles_labels()
        if twin is not None:
            more = twin.get_legend_handles_labels()
            handles = (handles[0] + more[0], handles[1] + more[1])
        if handles[0]:
            ax.legend(*handles, loc="upper left", fontsize=6, frameon=False, ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the run")
    events = ", ".join(f"{label} at {when:.0f} s" for when, label in record["events"])
    fig.suptitle(f"{dashboard['title']}: inferegator serve, 2 workers, a bench run of "
                 f"{times[-1]:.0f} s scraped every second ({events})", color=text, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, facecolor=background)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replot", help="draw these saved scrapes instead of running")
    parser.add_argument("--duration", type=float, default=DURATION_S)
    parser.add_argument("--json-clients", type=int, default=4)
    parser.add_argument("--stream-clients", type=int, default=4)
    parser.add_argument("--out", default=str(PICTURE))
    args = parser.parse_args()
    dashboard = json.loads(DASHBOARD.read_text())
    if args.replot:
        record = json.loads(Path(args.replot).read_text())
    else:
        record = run(args)
        OUT_DIR.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        saved = OUT_DIR / f"dashboard-{stamp}.json"
        saved.write_text(json.dumps(record))
        print(f"scrapes: {saved}")
    plot(record, dashboard, Path(args.out))
    print(f"picture: {args.out} ({os.path.getsize(args.out) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
