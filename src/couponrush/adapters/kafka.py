"""Kafka through confluent-kafka (librdkafka), bridged to asyncio.

Why the plain ``Producer`` and not ``confluent_kafka.aio.AIOProducer`` or aiokafka:
- we need the idempotent producer (acks=all, broker-side de-duplication of retries); aiokafka's
  fails against Tansu (it only sends InitProducerId v0);
- we need headers (request id, event type) on every record; the aio producer rejects them.
So a ``Producer`` is polled by one background thread, and each delivery report resolves an
asyncio future on the owning loop with ``call_soon_threadsafe``.

Everything here speaks plain Kafka protocol; the Tansu-specific settings are only defaults
that a real cluster tolerates (see docs/OPERATIONS.md). Every client's configuration passes through
``kafka_clients.client_config`` (security, pass-through properties, our rate-limited logger).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from couponrush.adapters.kafka_clients import PLAINTEXT, KafkaClientOptions, client_config, failure_text
from couponrush.adapters.kafka_topics import CREATE_TOPICS, TopicPolicy, TopicsNotReady
from couponrush.adapters.kafka_topics import ensure_topics as ensure_topics
from couponrush.config import dlq_topic
from couponrush.service.ports import InboundRecord, OutboundMessage

log = logging.getLogger(__name__)


class _Batch:
    """The acknowledgements of one batch of messages: one future, one cross-thread wake-up for the whole batch.

    librdkafka reports each delivery on the producer's poll thread; a future (and a loop wake-up) per
    message cost the relay about a third of its CPU under load.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, fatal: threading.Event) -> None:
        self.loop = loop
        self.results: list[str | None] = [None] * size
        self.remaining = size
        self.fatal = fatal
        self.done: asyncio.Future[list[str | None]] = loop.create_future()
        self._lock = threading.Lock()
        if size == 0:
            self.done.set_result([])

    def reporter(self, index: int) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and err.fatal():
                self.fatal.set()
            self.settle(index, None if err is None else str(err), threadsafe=True)

        return delivered

    def settle(self, index: int, outcome: str | None, *, threadsafe: bool = False) -> None:
        with self._lock:
            self.results[index] = outcome
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            if threadsafe:
                self.loop.call_soon_threadsafe(self._finish)
            else:
                self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.results)


def producer_config(
    bootstrap: str, *, message_timeout_ms: int, options: KafkaClientOptions = PLAINTEXT
) -> dict[str, Any]:
    config = {
        "enable.idempotence": True,
        "acks": "all",
        # Same key -> partition mapping as the Java and aiokafka clients.
        "partitioner": "murmur2_random",
        # Never let a metadata request create a topic: the broker would pick the partition count.
        "allow.auto.create.topics": False,
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": message_timeout_ms,
        "socket.timeout.ms": min(message_timeout_ms, 10_000),
        "topic.metadata.refresh.interval.ms": 5000,
    }
    return client_config(bootstrap, config, options)


@dataclass
class KafkaSink:
    """Sends messages and awaits each acknowledgement, and recovers from a broker that lost its state.

    After any failed batch, the next one first makes sure the topics exist (with our partition
    counts; producers never auto-create). If a topic had to be created, the broker lost its state
    (a restarted Tansu keeps nothing), so the producer is recreated too: its producer id and
    metadata are stale. A fatal producer error (e.g. UNKNOWN_PRODUCER_ID) also recreates it.

    A lost connection recreates it as well: a broker restarted empty while nothing was being sent may
    have its topics re-created by another client first (a worker), and then acknowledges the stale
    producer's records and drops them (measured on the embedded broker: a relay whose every record
    vanished until the next restart). A new producer id costs nothing against a real cluster.
    """

    bootstrap: str
    topics: Mapping[str, int]
    policy: TopicPolicy = CREATE_TOPICS
    message_timeout_ms: int = 10_000
    options: KafkaClientOptions = PLAINTEXT
    _producer: Producer | None = None
    _poller: threading.Thread | None = None
    _running: threading.Event = field(default_factory=threading.Event)
    _fatal: threading.Event = field(default_factory=threading.Event)
    # Set from librdkafka's thread when the connection to the cluster drops: recreate before the next send.
    _disconnected: threading.Event = field(default_factory=threading.Event)
    _suspect: bool = True  # nothing verified yet: check the topics before the first send

    async def start(self) -> None:
        await self._recover()

    async def _recover(self) -> None:
        """Ensure topics; (re)create the producer if there is none, it is broken, or topics were lost."""
        created = await asyncio.to_thread(
            ensure_topics, self.bootstrap, self.topics, options=self.options, policy=self.policy
        )
        if created and self._producer is not None:
            log.warning("topics %s were missing (broker lost its state?); recreating the producer", created)
        disconnected = self._disconnected.is_set()
        if disconnected and self._producer is not None and not created:
            log.info("the connection to the cluster dropped; recreating the producer (the broker may have restarted)")
        if self._producer is None or self._fatal.is_set() or created or disconnected:
            await self._reset()
            self._open()
        self._suspect = False

    def _open(self) -> None:
        config = producer_config(self.bootstrap, message_timeout_ms=self.message_timeout_ms, options=self.options)
        config["error_cb"] = self._on_error
        self._fatal.clear()
        self._disconnected.clear()
        self._producer = Producer(config)
        self._running.set()
        producer = self._producer
        self._poller = threading.Thread(
            target=self._poll_forever, args=(producer,), name="kafka-producer-poll", daemon=True
        )
        self._poller.start()

    def _poll_forever(self, producer: Producer) -> None:
        while self._running.is_set() and producer is self._producer:
            producer.poll(0.05)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("kafka producer fatal error, it will be recreated: %s", error)
            self._fatal.set()
        else:
            if error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                self._disconnected.set()
            log.debug("kafka producer error: %s", error)

    async def _reset(self) -> None:
        old, self._producer = self._producer, None
        self._running.clear()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5)
        if old is not None:
            with contextlib.suppress(Exception):
                old.purge()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(old.flush, 0)

    async def send_all(self, messages: Sequence[OutboundMessage]) -> list[str | None]:
        if self._suspect or self._fatal.is_set() or self._disconnected.is_set() or self._producer is None:
            try:
                await self._recover()
            except TopicsNotReady as exc:
                return [f"topics not ready: {failure_text(exc)}"] * len(messages)
            except KafkaException as exc:
                return [f"broker unavailable: {failure_text(exc)}"] * len(messages)
        producer = self._producer
        assert producer is not None
        batch = _Batch(asyncio.get_running_loop(), len(messages), self._fatal)
        for index, message in enumerate(messages):
            while True:
                try:
                    producer.produce(
                        message.topic,
                        value=message.payload,
                        key=None if message.key is None else message.key.encode(),
                        headers=[(k, v.encode()) for k, v in message.headers.items()],
                        on_delivery=batch.reporter(index),
                        # -1: the partitioner picks by key; explicit only for topic-version markers.
                        partition=-1 if message.partition is None else message.partition,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    await asyncio.sleep(0.01)
                except KafkaException as exc:
                    if exc.args[0].fatal():
                        self._fatal.set()
                    batch.settle(index, f"produce failed: {exc}")
                    break
        results = await batch.done
        if any(result is not None for result in results):
            self._suspect = True
        return results

    def add_topic(self, topic: str, partitions: int) -> None:
        """Keep ``topic`` in existence too (a newer topic version); checked before the next send."""
        if self.topics.get(topic) != partitions:
            self.topics = {**self.topics, topic: partitions}
            self._suspect = True

    async def close(self) -> None:
        producer = self._producer
        if producer is not None:
            await asyncio.to_thread(producer.flush, 5)
        self._running.clear()
        self._producer = None
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5)


def consumer_config(
    bootstrap: str,
    group: str,
    *,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    fetch_wait_max_ms: int,
    options: KafkaClientOptions = PLAINTEXT,
) -> dict[str, Any]:
    config = {
        "group.id": group,
        "group.protocol": "classic",
        # Offsets are committed by us, explicitly, after the issuing transaction committed.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Never "latest": a consumer must not skip requests that arrived before it joined.
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": heartbeat_interval_ms,
        "fetch.wait.max.ms": fetch_wait_max_ms,
        "allow.auto.create.topics": False,
        # Notice a re-created topic (e.g. after a broker restart) within seconds, not minutes.
        "topic.metadata.refresh.interval.ms": 5000,
    }
    return client_config(bootstrap, config, options)


def _headers(message: Message) -> dict[str, bytes]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    result: dict[str, bytes] = {}
    for name, value in pairs:
        result[name] = value.encode() if isinstance(value, str) else (value or b"")
    return result


def _record(message: Message) -> InboundRecord:
    topic = message.topic()
    partition = message.partition()
    offset = message.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    key = message.key()
    value = message.value()
    return InboundRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key.encode() if isinstance(key, str) else key,
        value=value.encode() if isinstance(value, str) else value,
        headers=_headers(message),
    )


def _take(consumer: Consumer, max_records: int, timeout: float) -> list[Message]:
    """Wait at most ``timeout`` for one message, then take whatever else is already here, up to ``max_records``.

    ``Consumer.consume(n, timeout)`` alone waits until ``n`` messages arrived or the whole timeout
    passed: a batch size of 500 with a 0.5 s timeout would hold every request of a quiet moment
    for half a second. This way a lone request is issued at once and batches grow only with load.
    """
    first = consumer.consume(1, timeout)
    if not first or max_records <= 1:
        return first
    return first + consumer.consume(max_records - 1, 0)


def _log_assignment(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    log.info("assigned partitions: %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "none")


def _log_revocation(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    log.info("revoked partitions: %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "none")


_TOPIC_GONE = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}


def _missing_from(consumer: Consumer, topics: Mapping[str, int]) -> bool:
    """Whether the cluster this consumer sees lacks one of ``topics`` (all topics listed: a metadata request
    naming a missing topic would have the embedded broker auto-create it); False if it cannot tell."""
    try:
        known = consumer.list_topics(timeout=2).topics
    except KafkaException:
        return False
    return any(topic not in known or known[topic].error is not None for topic in topics)


@dataclass
class KafkaSource:
    """A consumer-group member whose blocking calls run on a worker thread.

    If a subscribed topic disappears (a broker that lost its state), librdkafka's consumer does
    not rejoin by itself once the topic is back; so the source re-creates the topics (with the
    configured partition counts) and a fresh consumer. Uncommitted records are simply redelivered.
    """

    # consumer_config(...): it carries the client options already, secrets included (so not in the repr).
    config: dict[str, Any] = field(repr=False)
    topics: Mapping[str, int]
    policy: TopicPolicy = CREATE_TOPICS
    options: KafkaClientOptions = PLAINTEXT  # for the admin client that prepares the topics
    _consumer: Consumer | None = None
    _stale: bool = False
    _stale_why: str = "a subscribed topic was missing when nothing was assigned"
    _topics_gone: bool = False
    _assigned_none: bool = False
    _assigned_while_missing: bool = False
    # Since when this subscribed member holds no partition (None while it holds some).
    _unassigned_since: float | None = None
    # How long the next rebuild waits between leaving and joining again (see request_rejoin).
    _settle_s: float = 0.0

    async def start(self) -> None:
        await self._prepare_topics()
        consumer = Consumer(self.config)
        consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._consumer = consumer
        self._stale = False
        self._assigned_none = False
        self._unassigned_since = time.monotonic()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        _log_assignment(consumer, partitions)
        # Nothing assigned: fine with more members than partitions, but it is also what a member gets
        # when it rejoined a restarted broker before the topic was re-created; librdkafka then never
        # rebalances onto the topic once it exists. next_batch tells the two apart, also by what this
        # consumer's metadata says right now: the relay may re-create the topic milliseconds later,
        # before next_batch looks, and the assignment is stale all the same.
        self._assigned_none = not partitions
        self._assigned_while_missing = not partitions and _missing_from(consumer, self.topics)
        if partitions:
            self._unassigned_since = None
        elif self._unassigned_since is None:
            self._unassigned_since = time.monotonic()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        _log_revocation(consumer, partitions)
        if self._unassigned_since is None:
            self._unassigned_since = time.monotonic()

    def unassigned_for(self) -> float:
        """Seconds this subscribed member has held no partition (0 while it holds any, or before start)."""
        since = self._unassigned_since
        return 0.0 if since is None or self._consumer is None else time.monotonic() - since

    def request_rejoin(self, why: str) -> None:
        """Rebuild the consumer before the next poll: a fresh member joins the group from scratch.

        The old member leaves first and the new one waits out a session timeout before joining, so the
        group coordinator has forgotten every member of the generation that never completed (a new
        member joining at once into such a group was seen to wait there for good on the embedded broker).
        """
        self._stale_why = why
        self._settle_s = self.config.get("session.timeout.ms", 6000) / 1000 + 1
        self._stale = True

    async def _topics_missing(self) -> bool:
        """Re-create any missing subscribed topic (with our partition counts); True if one was missing.

        (The admin client lists topics without a metadata request per topic, which Tansu would
        answer by auto-creating the topic with its own partition count.)
        """
        return bool(await self._prepare_topics())

    async def _prepare_topics(self) -> list[str]:
        return await asyncio.to_thread(
            ensure_topics, self.config["bootstrap.servers"], self.topics, options=self.options, policy=self.policy
        )

    async def subscribe(self, topics: Mapping[str, int]) -> None:
        """Consume exactly ``topics`` from now on (a topic version switch); starts the consumer if needed."""
        self.topics = dict(topics)
        if self._consumer is None:
            await self.start()
            return
        await self._prepare_topics()
        self._consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("now consuming %s", ", ".join(self.topics))

    async def _rebuild(self) -> None:
        log.warning("%s; recreating the consumer", self._stale_why)
        self._stale_why = "a subscribed topic was missing when nothing was assigned"
        old, self._consumer = self._consumer, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(old.close), 10)
        settle, self._settle_s = self._settle_s, 0.0
        await asyncio.sleep(settle)
        await self.start()

    async def next_batch(self, max_records: int, timeout: float) -> list[InboundRecord]:
        if self._stale:
            try:
                await self._rebuild()
            except KafkaException as exc:
                log.warning("broker still unavailable: %s", failure_text(exc))
                await asyncio.sleep(timeout)
                return []
        assert self._consumer is not None, "start() first"
        if self._topics_gone:
            self._topics_gone = False
            try:
                if await self._topics_missing():
                    log.warning("subscribed topics vanished (broker lost its state?); re-created them")
            except Exception as exc:  # the broker is away again: the next error brings us back here
                log.warning("could not re-create the subscribed topics: %s", failure_text(exc))
        if self._assigned_none:
            self._assigned_none = False
            stale, self._assigned_while_missing = self._assigned_while_missing, False
            try:
                if await self._topics_missing() or stale:
                    # Joined (the assignment came), so closing this member is clean: a fresh one rejoins.
                    log.warning("assigned nothing while a subscribed topic was missing; re-creating it and rejoining")
                    self._stale = True
                    return []
            except Exception as exc:  # the broker is away again: check on the next assignment
                log.warning("could not check the subscribed topics: %s", exc)
        messages = await asyncio.to_thread(_take, self._consumer, max_records, timeout)
        records: list[InboundRecord] = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(_record(message))
            elif error.code() in _TOPIC_GONE:
                # Re-create the topic and let this consumer rejoin by itself (librdkafka does, on the
                # metadata change). Closing it here would catch it mid-join: the embedded broker then keeps
                # the departed member as the group's leader, and no later member is ever assigned anything.
                self._topics_gone = True
                log.warning("consumer error: %s", error)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
        return records

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        assert self._consumer is not None, "start() first"
        positions: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            positions[key] = max(positions.get(key, -1), record.offset + 1)
        if not positions:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            await asyncio.to_thread(self._consumer.commit, offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance took the partition away: its new owner re-reads from the
            # last committed offset, and issuing is idempotent, so nothing is lost or doubled.
            log.warning("offset commit failed, records will be redelivered: %s", exc)

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records not yet committed per assigned partition, from the fetch-reported high watermark."""
        assert self._consumer is not None
        consumer = self._consumer
        assignment = await asyncio.to_thread(consumer.assignment)
        committed = await asyncio.to_thread(consumer.committed, assignment, 5)
        result: dict[tuple[str, int], int] = {}
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            position = tp.offset if tp.offset >= 0 else 0
            result[(tp.topic, tp.partition)] = max(0, high - position)
        return result

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await asyncio.to_thread(consumer.close)


@dataclass(frozen=True, slots=True)
class KafkaDeadLetters:
    """Parks a record it could not process on ``<topic>.dlq`` with the reason in headers."""

    sink: KafkaSink

    async def park(
        self, record: InboundRecord, reason: str, error: str, stop: asyncio.Event, *, attempts: int = 1
    ) -> bool:
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers.items()}
        headers.update(
            {
                "dlq-reason": reason,
                "dlq-error": error[:2000],
                "dlq-original-topic": record.topic,
                "dlq-original-partition": str(record.partition),
                "dlq-original-offset": str(record.offset),
                "dlq-attempts": str(attempts),
            }
        )
        message = OutboundMessage(
            topic=dlq_topic(record.topic),
            key=None if record.key is None else record.key.decode("utf-8", "replace"),
            payload=record.value or b"",
            headers=headers,
        )
        while not stop.is_set():
            [failure] = await self.sink.send_all([message])
            if failure is None:
                return True
            log.warning("could not park a dead letter yet, retrying: %s", failure)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return False
