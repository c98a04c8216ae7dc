"""Usage: requests, tokens and cost per day, by model and by key; CSV download."""

import csv
import io
import math
from datetime import datetime, timedelta, timezone

from inferegator.plugin import usage_summary

from ..web import Page

DAYS = 30
COUNTS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens")
FIELDS = (*COUNTS, "cost_usd")
METRICS = {"requests": "requests", "tokens": "tokens (prompt and completion)"}
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 720, 230, 56, 8, 12, 38
CSV_HEADER = ("day", "model", "key_id", "key_name", "key_prefix", *FIELDS)
RISKY = ("=", "+", "-", "@", "\t", "\r")


def last_days(now: float) -> list[str]:
    """The last DAYS UTC days, oldest first, today included."""
    today = datetime.fromtimestamp(now, timezone.utc).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(DAYS - 1, -1, -1)]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least value (1 for 0)."""
    if value <= 0:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def metric_of(row: dict | None, metric: str) -> int:
    if row is None:
        return 0
    return row["requests"] if metric == "requests" else (
        row["prompt_tokens"] + row["completion_tokens"])


def chart(days: list[str], by_day: dict, metric: str) -> dict:
    """Bars, gridlines and labels of the per-day SVG chart, in its viewBox's units."""
    values = [metric_of(by_day.get(day), metric) for day in days]
    top = nice_ceiling(max(values))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(days)
    bars = []
    for i, (day, value) in enumerate(zip(days, values)):
        height = plot_h * value / top
        if value and height < 1:
            height = 1
        bars.append({"day": day, "value": value, "x": round(LEFT + i * slot + slot * 0.15, 2),
                     "y": round(TOP + plot_h - height, 2), "width": round(slot * 0.7, 2),
                     "height": round(height, 2)})
    grid = [{"y": round(TOP + plot_h - plot_h * f, 2), "label": f"{int(top * f):,}"}
            for f in (0, 0.5, 1) if f == 0 or top * f == int(top * f)]
    middle = len(days) // 2
    labels = [{"x": LEFT, "anchor": "start", "text": days[0][5:]},  # ends stay inside
              {"x": round(LEFT + middle * slot + slot / 2, 2), "anchor": "middle",
               "text": days[middle][5:]},
              {"x": WIDTH - RIGHT, "anchor": "end", "text": days[-1][5:]}]
    busiest = max(bars, key=lambda b: b["value"])
    return {"bars": bars, "grid": grid, "labels": labels, "busiest": busiest,
            "total": sum(values), "width": WIDTH, "height": HEIGHT,
            "baseline": TOP + plot_h, "left": LEFT, "right": WIDTH - RIGHT}


def totals(rows: list[dict]) -> dict:
    summed = {name: sum(r[name] for r in rows) for name in COUNTS}
    summed["cost_usd"] = sum((r["cost_usd"] for r in rows), 0.0)
    return summed


def safe_cell(value):
    """A cell a spreadsheet will not run as a formula; costs in plain decimals."""
    if isinstance(value, float):
        return f"{value:.10f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, str) and value.startswith(RISKY):
        return "'" + value
    return value


class Usage(Page):
    """The last 30 days of the user's usage: totals, a per-day chart and three tables."""

    def get(self, ctx):
        db, user_id = self.console.store.db, ctx.user["id"]
        days = last_days(self.console.now())
        start, end = days[0], days[-1]
        by_day = usage_summary(db, user_id, "day", start, end)
        metric = ctx.query("chart")
        metric = metric if metric in METRICS else "requests"
        keys = {k["id"]: k for k in self.console.store.accounts.list_keys(user_id)}
        ctx.render("usage.html", start=start, end=end, by_day=by_day,
                   by_model=usage_summary(db, user_id, "model", start, end),
                   by_key=usage_summary(db, user_id, "key", start, end), keys=keys,
                   totals=totals(by_day), metric=metric, metrics=METRICS,
                   chart=chart(days, {r["day"]: r for r in by_day}, metric))


class UsageCsv(Page):
    """The same 30 days as CSV: one row per day, model and key."""

    def get(self, ctx):
        store, user_id = self.console.store, ctx.user["id"]
        days = last_days(self.console.now())
        keys = {k["id"]: k for k in store.accounts.list_keys(user_id)}
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_HEADER)
        for row in usage_summary(store.db, user_id, "day,model,key", days[0], days[-1]):
            key = keys.get(row["key"], {})
            writer.writerow([safe_cell(v) for v in (
                row["day"], row["model"], row["key"] or "", key.get("name", ""),
                key.get("prefix", ""), *(row[name] for name in FIELDS))])
        ctx.resp.content_type = "text/csv; charset=utf-8"
        ctx.resp.set_header("Content-Disposition",
                            'attachment; filename="inferegator-usage.csv"')
        ctx.resp.text = out.getvalue()
