"""What every Kafka client of the service shares: how it connects, where librdkafka's lines go, and how a
failure to connect is told in one line.

- ``client_config`` is the one function every producer, consumer and admin configuration passes
  through (relay sink, worker source, dead-letter sink and source, topic admin, readiness probe, the
  ``dlq`` commands): it adds the security settings and the pass-through properties
  (``kafka_client_options``), and routes librdkafka's own log lines to our logger.
- Those lines are rate-limited (``RepeatFilter``): a closed port or a failing TLS handshake makes
  librdkafka repeat the same line on every reconnect (~20 a second at first), which would drown the
  JSON log. The same line is written at most once per ``COUPONRUSH_KAFKA_LOG_REPEAT_S``; the next one
  let through says how many were suppressed meanwhile.
- With a ``logger`` configured, librdkafka queues its lines (and error callbacks) until the client is
  polled: producers and consumers are polled anyway, ``Admin`` polls its client after every call.
- ``ClientErrors`` keeps the most telling error librdkafka reported, so that a call failing with the
  generic "Broker transport failure" can say "TLS failed: certificate verify failed" instead.

Secrets (the SASL password, the key password) live only in ``KafkaClientOptions.properties``, which
is neither in its repr nor logged; ``summary`` is what may be shown.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata  # type: ignore[attr-defined]

from couponrush.config import KafkaProperty, Settings

LIBRDKAFKA_LOGGER = "couponrush.kafka.librdkafka"

T = TypeVar("T")

# Parts of a librdkafka line that differ between repeats of the same event: numbers (client instance
# ``rdkafka#producer-7``, ``after 3ms``, timestamps, counts).
_VARYING = re.compile(r"\d+")


@dataclass
class _Seen:
    last: float
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Lets the same message through at most once per ``every_s`` seconds and counts the ones it suppressed.

    "The same" ignores numbers. The first line after a quiet period carries ``suppressed=N`` (also
    appended to its text) when N repeats were dropped since the previous one.
    """

    def __init__(self, every_s: float = 60.0, *, max_messages: int = 1000) -> None:
        super().__init__()
        self.every_s = every_s
        self.max_messages = max_messages
        self.suppressed_total = 0
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._lock = threading.Lock()  # librdkafka's lines arrive on poll threads

    def filter(self, record: logging.LogRecord) -> bool:
        if self.every_s <= 0:
            return True
        key = f"{record.levelno}:{_VARYING.sub('#', record.getMessage())}"
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.last < self.every_s:
                seen.suppressed += 1
                self.suppressed_total += 1
                return False
            suppressed = 0 if seen is None else seen.suppressed
            self._seen[key] = _Seen(last=now)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_messages:
                self._seen.popitem(last=False)
        if suppressed:
            record.msg = f"{record.getMessage()} ({suppressed} more like it suppressed since the last one)"
            record.args = ()
            record.suppressed = suppressed
        return True


def librdkafka_logger(repeat_s: float = 60.0) -> logging.Logger:
    """The logger librdkafka's lines go to, with one ``RepeatFilter`` (the latest ``repeat_s`` applies)."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    repeat = next((f for f in logger.filters if isinstance(f, RepeatFilter)), None)
    if repeat is None:
        logger.addFilter(RepeatFilter(repeat_s))
    else:
        repeat.every_s = repeat_s
    return logger


@dataclass(frozen=True)
class KafkaClientOptions:
    """How every client connects: librdkafka security and pass-through properties, and the log repeat window."""

    properties: Mapping[str, KafkaProperty] = field(default_factory=dict, repr=False)
    log_repeat_s: float = 60.0

    @property
    def summary(self) -> str:
        """For logs and messages: the protocol, the mechanism and user, the names of extra properties. No secret."""
        shown = [str(self.properties.get("security.protocol", "PLAINTEXT"))]
        if "sasl.mechanism" in self.properties:
            shown.append(f"{self.properties['sasl.mechanism']} as {self.properties.get('sasl.username')}")
        extra = sorted(k for k in self.properties if not k.startswith(("security.", "sasl.", "ssl.")))
        if extra:
            shown.append("extra: " + ", ".join(extra))
        return "; ".join(shown)

    def __repr__(self) -> str:
        return f"KafkaClientOptions({self.summary!r}, log_repeat_s={self.log_repeat_s})"


PLAINTEXT = KafkaClientOptions()


def kafka_client_options(settings: Settings) -> KafkaClientOptions:
    """The librdkafka properties the settings stand for (COUPONRUSH_KAFKA_SECURITY_PROTOCOL, ..._SASL_*, ..._SSL_*,
    ..._EXTRA); the settings have checked they are complete and that the extras override nothing reserved."""
    properties: dict[str, KafkaProperty] = {**settings.kafka_extra}
    protocol = settings.kafka_security_protocol
    properties["security.protocol"] = protocol
    if protocol.startswith("SASL_"):
        mechanism, username, password = (
            settings.kafka_sasl_mechanism,
            settings.kafka_sasl_username,
            settings.kafka_sasl_password,
        )
        if mechanism is None or username is None or password is None:
            raise ValueError(f"{protocol} needs COUPONRUSH_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD")
        properties["sasl.mechanism"] = mechanism
        properties["sasl.username"] = username
        properties["sasl.password"] = password.get_secret_value()
    if protocol.endswith("SSL"):
        if settings.kafka_ssl_ca_file is not None:
            properties["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
        if settings.kafka_ssl_cert_file is not None and settings.kafka_ssl_key_file is not None:
            properties["ssl.certificate.location"] = str(settings.kafka_ssl_cert_file)
            properties["ssl.key.location"] = str(settings.kafka_ssl_key_file)
        if settings.kafka_ssl_key_password is not None:
            properties["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return KafkaClientOptions(properties=properties, log_repeat_s=settings.kafka_log_repeat_s)


def client_config(bootstrap: str, config: Mapping[str, Any], options: KafkaClientOptions) -> dict[str, Any]:
    """The configuration of one producer, consumer or admin client: its own ``config``, then the security and
    pass-through properties (extras may tune what the service merely defaults, e.g. ``linger.ms``; the
    settings refuse those it depends on), then the bootstrap servers and our rate-limited logger."""
    return {
        **config,
        **options.properties,
        "bootstrap.servers": bootstrap,
        "logger": librdkafka_logger(options.log_repeat_s),
    }


def check_client_options(options: KafkaClientOptions) -> str | None:
    """Why librdkafka refuses these properties (an unknown name, a bad value, a key it cannot decrypt), or None.

    Builds a producer and a consumer that connect nowhere (no bootstrap servers), so a mistake is told
    at start-up, once, instead of by every client the service makes later."""
    base: dict[str, Any] = {**options.properties, "log_level": 0}
    try:
        Producer(base)
        Consumer({**base, "group.id": "couponrush-configuration-check"})
    except (KafkaException, ValueError, TypeError) as exc:
        return f"librdkafka refuses the Kafka client settings: {failure_text(exc)}"
    return None


# --- telling a failure in one line ---

# From most to least telling: a TLS or SASL failure says what to fix; "all brokers are down" says nothing.
_RANK = {
    KafkaError._SSL: 5,
    KafkaError._AUTHENTICATION: 5,
    KafkaError.SASL_AUTHENTICATION_FAILED: 5,
    KafkaError._RESOLVE: 4,
    KafkaError._TRANSPORT: 3,
    KafkaError._ALL_BROKERS_DOWN: 0,
}
# "ssl://host:9093/bootstrap: ", "host:9092/1: ": the broker is named by the caller's message already.
_BROKER_PREFIX = re.compile(r"^(?:[a-z_]+://)?[^\s/]+/[^\s:]+: ")
_TIMING = re.compile(r"\s*\(after \d+ms in state \w+\)")


def _hint(code: int, text: str) -> str:
    lowered = text.lower()
    if "certificate verify failed" in lowered or "unable to get local issuer" in lowered:
        return " (is COUPONRUSH_KAFKA_SSL_CA_FILE the CA that signed the broker's certificate?)"
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED) or "sasl" in lowered:
        return " (check COUPONRUSH_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD)"
    if code == KafkaError._SSL or "ssl" in lowered:
        return " (check COUPONRUSH_KAFKA_SECURITY_PROTOCOL and the COUPONRUSH_KAFKA_SSL_* files)"
    return ""


def explain(error: KafkaError) -> str:
    """One line from one librdkafka error: without the broker-address prefix and the timing suffix."""
    text = _TIMING.sub("", _BROKER_PREFIX.sub("", error.str()))
    code = error.code()
    if code == KafkaError._SSL or "SSL routines" in text:
        kind = "TLS failed: "
    elif code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        kind = "authentication failed: "
    else:
        kind = ""
    return f"{kind}{text.removeprefix('SSL handshake failed: ')}{_hint(code, text)}"


def failure_text(exc: BaseException) -> str:
    """The text of an exception; of a ``KafkaException``, its ``KafkaError``'s message (not its repr)."""
    if not isinstance(exc, KafkaException):
        return str(exc)
    [first, *_] = exc.args or (str(exc),)
    return first.str() if isinstance(first, KafkaError) else str(first)


class KafkaUnavailable(KafkaException):
    """The cluster could not be reached; the message says why, in one line (it is a ``KafkaException``, so
    every place that retries an unreachable broker retries this too)."""


class ClientErrors:
    """An ``error_cb`` that keeps the most telling error since ``clear``."""

    def __init__(self) -> None:
        self.worst: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if self.worst is None or _RANK.get(error.code(), 1) >= _RANK.get(self.worst.code(), 1):
            self.worst = error

    def clear(self) -> None:
        self.worst = None

    def unavailable(self, exc: KafkaException) -> KafkaException:
        """``exc`` told better, if librdkafka said more than "transport failure" meanwhile."""
        if self.worst is None or _RANK.get(self.worst.code(), 1) <= 0:
            return exc
        return KafkaUnavailable(explain(self.worst))


class Admin:
    """An ``AdminClient`` whose queued log lines and errors are served after every call, and whose failure to
    reach the cluster raises ``KafkaUnavailable`` with the reason librdkafka gave. Blocking: run it on a thread."""

    def __init__(self, bootstrap: str, options: KafkaClientOptions, timeout_s: float) -> None:
        self.errors = ClientErrors()
        self.timeout_s = timeout_s
        config = {"socket.timeout.ms": max(int(timeout_s * 1000), 10), "error_cb": self.errors}
        self.client = AdminClient(client_config(bootstrap, config, options))

    def call(self, operation: Callable[[AdminClient], T]) -> T:
        self.client.poll(0)
        self.errors.clear()
        try:
            return operation(self.client)
        except KafkaException as exc:
            self.client.poll(0)
            better = self.errors.unavailable(exc)
            if better is exc:
                raise
            raise better from exc
        finally:
            self.client.poll(0)

    def list_topics(self) -> ClusterMetadata:
        return self.call(lambda client: client.list_topics(timeout=self.timeout_s))
