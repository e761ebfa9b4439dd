"""OpenTelemetry spans, only when an exporter is configured with the standard ``OTEL_*`` variables.

Off by default. When off, nothing from the OpenTelemetry SDK is imported, no tracer provider is
installed, and every helper here returns at once (one boolean test). It turns on when
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, unless ``OTEL_SDK_DISABLED=true``. The SDK and the OTLP
exporter come with the optional extra ``couponrush[otel]``.

Trace context crosses processes as a W3C ``traceparent`` header: on the HTTP request, then in the
outbox row's headers, on the Kafka record, and into the worker's span, so one trace spans API -> worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

_tracer: Any = None  # an opentelemetry Tracer once configured; None means tracing is off


def enabled() -> bool:
    return _tracer is not None


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the standard OTEL_* variables ask for spans to be exported."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure_tracing(role: str, *, exporter: Any = None, set_global: bool = True) -> bool:
    """Install a tracer provider if asked to (env, or an explicit ``exporter`` in tests). True when on."""
    global _tracer
    if exporter is None and not wanted():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for traces but opentelemetry-sdk is not installed (pip install 'couponrush[otel]')")
        return False
    service = os.environ.get("OTEL_SERVICE_NAME") or f"couponrush-{role}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for name in [e.strip().lower() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]:
            if name == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
            elif name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            else:
                log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (use otlp or console)", name)
    if set_global:
        trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("couponrush")
    log.info("tracing on: service %s", service)
    return True


def disable() -> None:
    """Turn spans off again (tests)."""
    global _tracer
    _tracer = None


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log lines; None when off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def inject_headers() -> dict[str, str]:
    """The current trace context as message headers (``traceparent``); empty when off."""
    if _tracer is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _extract(headers: Mapping[str, str | bytes]) -> Any:
    from opentelemetry import propagate

    carrier = {k.lower(): (v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in headers.items()}
    return propagate.extract(carrier)


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent_headers: Mapping[str, str | bytes] | None = None,
    kind: str = "INTERNAL",
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Any]:
    """A span named ``name`` (child of the trace in ``parent_headers`` if given); a no-op when off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    context = _extract(parent_headers) if parent_headers else None
    with _tracer.start_as_current_span(
        name, context=context, kind=SpanKind[kind], attributes=dict(attributes or {})
    ) as current:
        yield current


def set_attribute(current: Any, key: str, value: str | int | float | bool) -> None:
    if current is not None:
        current.set_attribute(key, value)


def rename(current: Any, name: str) -> None:
    if current is not None:
        current.update_name(name)
