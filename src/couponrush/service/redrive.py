"""Re-drive: nothing accepted is lost, even when the broker loses a record it acknowledged.

A restarted in-memory broker forgets everything; a broker can skip records when several
producers write one partition. Either way a request stays PENDING in the database, so the
active relay periodically publishes such requests again. The issuer is idempotent per request
id, so a re-drive of a request that was only slow changes nothing.
"""

from __future__ import annotations

import asyncio
import logging

from couponrush.service.logs import failed
from couponrush.service.ports import StuckRequests
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)


async def redrive_stuck_requests(
    requests: StuckRequests, stop: asyncio.Event, *, after_s: float, batch_size: int = 1000
) -> None:
    interval = max(0.5, after_s / 3)
    while not stop.is_set():
        try:
            count = await requests.redrive_stuck(after_s, batch_size)
            if count:
                log.warning("re-drove %d request(s) still pending after %.0fs", count, after_s)
        except Exception as exc:
            failed(log, exc, "re-drive pass failed; retrying")
        if await sleep_unless(stop, interval):
            return
