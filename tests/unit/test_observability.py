"""Observability's pure parts: log lines, tracing switches, metric rendering, readiness, CLI numbers."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import CouponStatus, NewCoupon, RequestStatus
from couponrush.entrypoints.cli.coupons import parse_duration
from couponrush.entrypoints.cli.stats import stats_line
from couponrush.observability import metrics, tracing
from couponrush.observability.context import bound_request_id, request_id_or_new
from couponrush.observability.health import readiness
from couponrush.observability.instrument import ObservedIssuing, TimedGate
from couponrush.observability.logging import ContextFilter, JsonFormatter, TextFormatter, use_json
from couponrush.service.ports import CouponProgress, OutboxState
from tests.support.fakes import FakeCoupons, FakeGate, FakeIssuer, handle_one

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def sample(name: str, **labels: str) -> float:
    """A value of this process's metric (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def _line(message: str, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("couponrush.test", logging.INFO, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    ContextFilter("worker").filter(record)
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def test_a_json_log_line_carries_the_role_and_the_bound_request_id() -> None:
    with bound_request_id("abc123"):
        line = _line("issued", coupon_id=7)
    assert (line["role"], line["msg"], line["request_id"], line["coupon_id"]) == ("worker", "issued", "abc123", 7)
    assert "request_id" not in _line("outside any request")


def test_text_lines_show_the_request_id_and_json_is_chosen_when_not_a_terminal() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello", None, None)
    with bound_request_id("r9"):
        ContextFilter("api").filter(record)
    assert TextFormatter().format(record).endswith("[api] x: hello [request_id=r9]")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_json("auto", io.StringIO()) is True
    assert use_json("auto", Tty()) is False
    assert use_json("json", Tty()) is True
    assert use_json("text", io.StringIO()) is False


def test_the_http_request_id_becomes_the_coupon_request_id_else_a_fresh_one() -> None:
    with bound_request_id("from-http"):
        assert request_id_or_new() == "from-http"
    fresh = request_id_or_new()
    assert len(fresh) == 32
    assert fresh != request_id_or_new()


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_wanted_only_when_an_exporter_is_configured(env: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(env) is wanted


def test_tracing_off_installs_no_tracer_provider_and_imports_no_sdk() -> None:
    """In a clean process (the test session itself may have imported the SDK)."""
    probe = (
        "import sys\n"
        "from couponrush.observability import tracing\n"
        "assert tracing.configure_tracing('api') is False\n"
        "assert tracing.inject_headers() == {} and tracing.current_ids() is None\n"
        "with tracing.span('x') as s: assert s is None\n"
        "from opentelemetry import trace\n"
        "print(type(trace.get_tracer_provider()).__name__, 'opentelemetry.sdk' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ProxyTracerProvider", "False"]


def test_database_gauges_render_as_prometheus_text() -> None:
    families = metrics.database_families(
        OutboxState(backlog=3, oldest_age_s=1.5), [CouponProgress(coupon_id=7, quantity=10, issued=4, pending=2)]
    )
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics.render(families).decode())
        for s in f.samples
    }
    assert parsed[("couponrush_outbox_backlog", ())] == 3
    assert parsed[("couponrush_outbox_oldest_age_seconds", ())] == 1.5
    assert parsed[("couponrush_coupon_remaining", (("coupon_id", "7"),))] == 6
    assert parsed[("couponrush_coupon_pending", (("coupon_id", "7"),))] == 2
    assert parsed[("couponrush_coupon_available", (("coupon_id", "7"),))] == 4  # 10 - 4 issued - 2 pending


def test_consumer_lag_series_follow_the_assignment() -> None:
    metrics.set_consumer_lag({("t", 0): 5, ("t", 1): 0})
    assert sample("couponrush_consumer_lag", topic="t", partition="0") == 5
    metrics.set_consumer_lag({("t", 1): 2})
    assert sample("couponrush_consumer_lag", topic="t", partition="1") == 2
    assert 'partition="0"' not in metrics.render().decode().split("couponrush_consumer_lag gauge")[1]


class _Probe:
    def __init__(self, name: str, answer: str | None, delay: float = 0.0) -> None:
        self.name = name
        self.answer = answer
        self.delay = delay

    async def check(self) -> str:
        await asyncio.sleep(self.delay)
        if self.answer is None:
            raise ConnectionRefusedError("refused")
        return self.answer


async def test_ready_only_when_every_probe_is_up_and_each_probe_is_bounded() -> None:
    status, body = await readiness([_Probe("postgres", "UP"), _Probe("redis", "UP"), _Probe("kafka", "UP")])
    assert (status, body["message"]) == (200, "OK")
    status, body = await readiness(
        [_Probe("postgres", "PENDING_MIGRATIONS(1)"), _Probe("redis", None), _Probe("kafka", "UP", delay=5)],
        timeout_s=0.1,
    )
    assert status == 503
    assert body["data"]["postgres"] == "PENDING_MIGRATIONS(1)"
    assert body["data"]["redis"].startswith("DOWN: ConnectionRefusedError")
    assert body["data"]["kafka"] == "DOWN: no answer within 0.1s"


async def test_the_timed_gate_observes_each_admission_by_verdict() -> None:
    coupons, inner = FakeCoupons(), FakeGate()
    coupon = await coupons.create(NewCoupon("c", Decimal("0.1"), 1, CouponStatus.PUBLISHABLE, NOW + timedelta(days=1)))
    await inner.open(coupon, NOW, created=True)
    gate = TimedGate(inner)
    before = sample("couponrush_gate_admit_seconds_count", verdict="ADMITTED")
    closed_before = sample("couponrush_gate_admit_seconds_count", verdict="CLOSED")
    assert (await gate.admit(coupon.id, 1, "r1", NOW)).state.value == "ADMITTED"
    assert (await gate.admit(coupon.id, 2, "r2", NOW)).state.value == "CLOSED"
    metrics.TALLY.flush()  # timings are written in batches (at the latest 0.1 s later, and at every scrape)
    assert sample("couponrush_gate_admit_seconds_count", verdict="ADMITTED") == before + 1
    assert sample("couponrush_gate_admit_seconds_count", verdict="CLOSED") == closed_before + 1


async def test_observed_issuing_counts_first_decisions_and_logs_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coupons, gate = FakeCoupons(), FakeGate()
    coupon = await coupons.create(NewCoupon("c", Decimal("0.1"), 1, CouponStatus.PUBLISHABLE, NOW + timedelta(days=1)))
    await gate.open(coupon, NOW, created=True)
    service = ObservedIssuing(issuer=FakeIssuer(coupons), gate=gate, clock=lambda: NOW)
    issued = sample("couponrush_issue_decisions_total", status="ISSUED", reason="OK")
    sold_out = sample("couponrush_issue_decisions_total", status="REJECTED", reason="SOLD_OUT")
    waited = sample("couponrush_time_to_issue_seconds_count")

    def event(request_id: str, user_id: int) -> PublishRequested:
        return PublishRequested(request_id=request_id, user_id=user_id, coupon_id=coupon.id, requested_at=NOW)

    caplog.set_level(logging.DEBUG, logger="couponrush.service.issuing")
    caplog.handler.addFilter(ContextFilter("worker"))
    assert (await handle_one(service, event("req-a", 1))).status is RequestStatus.ISSUED
    assert (await handle_one(service, event("req-b", 2))).status is RequestStatus.REJECTED
    assert (await handle_one(service, event("req-a", 1))).replayed  # a redelivery is not a new decision

    assert sample("couponrush_issue_decisions_total", status="ISSUED", reason="OK") == issued + 1
    assert sample("couponrush_issue_decisions_total", status="REJECTED", reason="SOLD_OUT") == sold_out + 1
    assert sample("couponrush_time_to_issue_seconds_count") == waited + 1
    by_id = {getattr(r, "request_id", None) for r in caplog.records if r.name == "couponrush.service.issuing"}
    assert {"req-a", "req-b"} <= by_id


async def test_observed_batches_count_each_first_decision_and_log_each_request_by_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coupons, gate = FakeCoupons(), FakeGate()
    coupon = await coupons.create(NewCoupon("c", Decimal("0.1"), 1, CouponStatus.PUBLISHABLE, NOW + timedelta(days=1)))
    await gate.open(coupon, NOW, created=True)
    service = ObservedIssuing(issuer=FakeIssuer(coupons), gate=gate, clock=lambda: NOW)
    issued = sample("couponrush_issue_decisions_total", status="ISSUED", reason="OK")
    sold_out = sample("couponrush_issue_decisions_total", status="REJECTED", reason="SOLD_OUT")

    def event(request_id: str, user_id: int) -> PublishRequested:
        return PublishRequested(request_id=request_id, user_id=user_id, coupon_id=coupon.id, requested_at=NOW)

    caplog.set_level(logging.DEBUG, logger="couponrush.service.issuing")
    caplog.handler.addFilter(ContextFilter("worker"))
    outcomes = await service.handle_batch([event("b-1", 1), event("b-2", 2), event("b-1", 1)])
    assert [o.replayed for o in outcomes] == [False, False, True]
    assert sample("couponrush_issue_decisions_total", status="ISSUED", reason="OK") == issued + 1
    assert sample("couponrush_issue_decisions_total", status="REJECTED", reason="SOLD_OUT") == sold_out + 1
    by_id = {getattr(r, "request_id", None) for r in caplog.records if r.name == "couponrush.service.issuing"}
    assert {"b-1", "b-2"} <= by_id


def test_stats_lines_derive_stock_lag_and_rate() -> None:
    progress = CouponProgress(coupon_id=3, quantity=100, issued=40, pending=25, unsent=5)
    first = stats_line(progress, None, now=10.0)
    assert (first.stock, first.pending, first.in_outbox, first.lag, first.issued_per_s) == (60, 25, 5, 20, 0.0)
    second = stats_line(CouponProgress(3, 100, 70, 5, 0), (40, 10.0), now=12.0)
    assert (second.stock, second.lag, second.issued_per_s) == (30, 5, 15.0)
    assert second.as_json()["issuedPerSecond"] == 15.0


def test_durations_for_coupon_expiry() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("7d") == timedelta(days=7)
    with pytest.raises(Exception, match="a number and a unit"):
        parse_duration("soon")


async def test_the_middleware_gives_each_request_an_id_a_route_labelled_count_and_a_bounded_span_name() -> None:
    import httpx
    from fastapi import FastAPI
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from couponrush.entrypoints.api.middleware import ObservabilityMiddleware
    from couponrush.observability.context import current_request_id

    app = FastAPI()
    app.add_middleware(ObservabilityMiddleware)
    seen: list[str | None] = []

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        seen.append(current_request_id())
        return {"id": thing_id}

    before = sample("couponrush_http_requests_total", method="GET", route="/things/{thing_id}", status="200")
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("test", exporter=exporter, set_global=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            first = await http.get("/things/1")
            second = await http.get("/things/2", headers={"x-request-id": "client-made"})
    finally:
        tracing.disable()
    assert [first.headers["x-request-id"], second.headers["x-request-id"]] == seen
    assert "client-made" not in seen  # never trusted: it becomes a primary key
    assert len(set(seen)) == 2
    after = sample("couponrush_http_requests_total", method="GET", route="/things/{thing_id}", status="200")
    assert after == before + 2
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /things/{thing_id}"] * 2


async def test_relay_sends_and_dead_letters_are_counted_by_topic_and_reason() -> None:
    from couponrush.observability.instrument import MeteredDeadLetters, MeteredSink
    from couponrush.service.ports import InboundRecord, OutboundMessage
    from tests.support.fakes import FakeDeadLetters, FakeSink

    sent, failed = (
        sample("couponrush_relay_sent_total", topic="t.u"),
        sample("couponrush_relay_send_failures_total", topic="t.u"),
    )
    sink = MeteredSink(FakeSink(refuse={"bad"}))
    results = await sink.send_all([OutboundMessage("t.u", k, b"{}") for k in ("1", "2", "bad")])
    assert results == [None, None, "broker unavailable"]
    assert sample("couponrush_relay_sent_total", topic="t.u") == sent + 2
    assert sample("couponrush_relay_send_failures_total", topic="t.u") == failed + 1

    parked = sample("couponrush_dead_letters_total", reason="MALFORMED")
    record = InboundRecord(topic="t.u", partition=0, offset=1, key=None, value=b"?", headers={})
    assert await MeteredDeadLetters(FakeDeadLetters()).park(record, "MALFORMED", "bad json", asyncio.Event())
    assert sample("couponrush_dead_letters_total", reason="MALFORMED") == parked + 1


def test_a_tally_writes_what_observe_and_inc_would_have_written() -> None:
    registry = CollectorRegistry()
    direct = Histogram("t_direct_seconds", "d", buckets=(0.001, 0.01, 0.1), registry=registry)
    tallied = Histogram("t_tallied_seconds", "t", buckets=(0.001, 0.01, 0.1), registry=registry)
    counter = Counter("t_count_total", "c", ["k"], registry=registry)
    values = [0.0005, 0.001, 0.002, 0.01, 0.05, 0.5, 2.0, 0.0]
    for value in values:
        direct.observe(value)
    tally = metrics.Tally()
    for value in values:
        tally.observe(tallied, value)
    tally.count(counter.labels("a"))
    tally.count(counter.labels("a"), 2)
    tally.flush()

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for family in registry.collect()
            if family.name == name
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("t_tallied_seconds") == samples("t_direct_seconds")
    assert registry.get_sample_value("t_count_total", {"k": "a"}) == 3
