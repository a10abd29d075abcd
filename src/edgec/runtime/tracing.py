"""OpenTelemetry tracing for the generated runtime: off unless asked for.

Self-contained: the runtime generator copies it verbatim into a bundle's ``runtime/``, and it
imports OpenTelemetry only when tracing is on (``opentelemetry-sdk``, plus
``opentelemetry-exporter-otlp-proto-http`` for ``otlp``: the ``trace`` extra, listed in the
bundle's ``requirements.txt``).

Modes: ``off`` (the default: nothing is imported, every call is a no-op), ``console`` (spans
as JSON on stderr, so a ``--json`` stream on stdout stays clean) and ``otlp`` (OTLP over HTTP
to ``$OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``). Each frame is one
trace: on the device a ``frame`` span with a child per device stage and an ``offload`` span for
the request to the gateway, whose W3C ``traceparent`` header carries the trace to the gateway;
there a ``gateway.request`` span with ``gateway.queue`` (waiting for a worker and a batch) and
one ``gateway.stage`` span per stage the frame ran through.

Spans may be recorded after the fact (:meth:`Tracing.record`) with times taken on the
runtime's monotonic clock, converted here to the wall-clock nanoseconds OpenTelemetry wants.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping

MODES = ("off", "console", "otlp")
TRACEPARENT = "traceparent"


class TracingUnavailable(ValueError):
    """Tracing was asked for but OpenTelemetry (or its OTLP exporter) is not installed."""


def wall_ns(monotonic_s: float, clock=time.perf_counter) -> int:
    """The wall-clock time, in nanoseconds, of ``monotonic_s`` on ``clock``."""
    return time.time_ns() - int((clock() - monotonic_s) * 1e9)


class Tracing:
    """Spans for one runtime (``service`` names it: ``edgec-device``, ``edgec-gateway``).

    Args:
        mode: ``off``, ``console`` or ``otlp``.
        service: The ``service.name`` of the spans.
        exporter: A span exporter to use instead of the mode's (tests: an in-memory one).

    Raises:
        ValueError: An unknown mode.
        TracingUnavailable: OpenTelemetry is missing for ``console`` or ``otlp``.
    """

    def __init__(self, mode: str = "off", service: str = "edgec", exporter=None):
        if mode not in MODES:
            raise ValueError(f"unknown trace mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode = mode
        self.enabled = mode != "off" or exporter is not None
        self._provider = self._tracer = self._propagator = None
        if not self.enabled:
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                ConsoleSpanExporter,
                SimpleSpanProcessor,
            )
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            raise TracingUnavailable(
                f"--trace {mode} needs OpenTelemetry: pip install opentelemetry-sdk "
                "opentelemetry-exporter-otlp-proto-http (edgec's trace extra)"
            ) from None
        if exporter is not None:
            processor = SimpleSpanProcessor(exporter)
        elif mode == "console":
            processor = SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr))
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                raise TracingUnavailable(
                    "--trace otlp needs the OTLP exporter: pip install "
                    "opentelemetry-exporter-otlp-proto-http"
                ) from None
            processor = BatchSpanProcessor(OTLPSpanExporter())
        # A provider of our own, not the process-wide one: two runtimes in one process (a
        # device and a gateway in tests, edgec itself) keep their own service names.
        self._provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("edgec.runtime")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, name: str, parent=None, start_s: float | None = None, **attributes):
        """Start a span (``None`` when off); ``parent`` is a span or an extracted context,
        ``start_s`` a time on the runtime's monotonic clock (default: now)."""
        if not self.enabled:
            return None
        start = None if start_s is None else wall_ns(start_s)
        return self._tracer.start_span(
            name,
            context=self._context(parent),
            start_time=start,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )

    @staticmethod
    def end(span, end_s: float | None = None, **attributes) -> None:
        """End ``span`` (nothing for ``None``), setting ``attributes`` first."""
        if span is None:
            return
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)
        span.end(end_time=None if end_s is None else wall_ns(end_s))

    @contextlib.contextmanager
    def span(self, name: str, parent=None, **attributes) -> Iterator:
        """A span around a block (``None`` inside when off)."""
        span = self.start(name, parent, **attributes)
        try:
            yield span
        finally:
            self.end(span)

    def record(self, name: str, parent, start_s: float, end_s: float, **attributes) -> None:
        """A span that happened between two times on the runtime's monotonic clock."""
        self.end(self.start(name, parent, start_s, **attributes), end_s)

    def headers(self, span) -> dict[str, str]:
        """The W3C ``traceparent`` (and ``tracestate``) that continue ``span`` elsewhere."""
        if span is None or not self.enabled:
            return {}
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._context(span))
        return carrier

    def extract(self, headers: Mapping[str, str] | None):
        """The context a request's ``traceparent`` carries (``None`` when off or absent)."""
        if not self.enabled or headers is None:
            return None
        value = headers.get(TRACEPARENT)
        if not value:
            return None
        return self._propagator.extract({TRACEPARENT: value})

    def _context(self, parent):
        if parent is None:
            return None
        from opentelemetry import trace

        if isinstance(parent, trace.Span):
            return trace.set_span_in_context(parent)
        return parent  # already a context

    def shutdown(self) -> None:
        """Flush and stop the exporter."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self.enabled = False
