"""Drops as operators run them, over HTTP: a start time, a state that says what a coupon is, live changes
during a drop, who holds it and every request for it, and the record of every change."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from couponrush_bench.harness import ADMIN_TOKEN, System, coupon_body, create_coupon
from couponrush_bench.invariants import settle
from couponrush_bench.polling import eventually
from tests.e2e.test_bad_input import assert_envelope
from tests.e2e.test_observability import cli

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def client(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
        yield http


async def coupon(client: httpx.AsyncClient, coupon_id: int) -> dict[str, Any]:
    response = await client.get(f"/api/v1/coupons/{coupon_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def publish(client: httpx.AsyncClient, user_id: int, coupon_id: int) -> httpx.Response:
    return await client.post(f"/api/v1/users/{user_id}/coupons/publish", json={"couponId": coupon_id})


async def test_a_scheduled_coupon_says_when_it_opens_and_opens_then(client: httpx.AsyncClient) -> None:
    opens_at = datetime.now(UTC) + timedelta(seconds=3)
    created = await client.post(
        "/api/v1/coupons", json={**coupon_body(5), "opensAt": opens_at.isoformat()}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert (data["state"], data["status"]) == ("SCHEDULED", "PUBLISHABLE")
    assert datetime.fromisoformat(data["opensAt"]) == opens_at

    early = await publish(client, 1, data["id"])
    assert_envelope(early, 409, "NOT_OPEN")
    said = datetime.fromisoformat(early.json()["data"]["opensAt"])
    assert timedelta(0) <= said - opens_at < timedelta(milliseconds=1)  # the gate's instant, in whole ms
    assert 1 <= int(early.headers["Retry-After"]) <= 4

    admitted = await eventually(
        lambda: publish(client, 1, data["id"]), lambda r: r.status_code == 200, timeout=10, interval=0.1, what="open"
    )
    assert datetime.fromisoformat(admitted.json()["data"]["requestedAt"]) >= opens_at - timedelta(milliseconds=50)
    assert (await coupon(client, data["id"]))["state"] == "OPEN"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"expiredAt": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}, "expiredAt"),
        ({"opensAt": (datetime.now(UTC) + timedelta(days=2)).isoformat()}, "expiredAt"),  # expiry before opening
        ({"opensAt": "2030-01-01T00:00:00"}, "opensAt"),  # no offset
    ],
)
async def test_a_coupon_that_could_never_admit_anyone_is_refused_naming_the_field(
    client: httpx.AsyncClient, change: dict[str, str], field: str
) -> None:
    response = await client.post("/api/v1/coupons", json={**coupon_body(5), **change}, headers=ADMIN)
    assert_envelope(response, 400, "INVALID_REQUEST")
    assert field in response.json()["message"]


async def test_states_follow_the_drop_and_an_expired_coupon_cannot_be_reopened(
    system: System, client: httpx.AsyncClient
) -> None:
    sold = await create_coupon(client, 1)
    assert (await publish(client, 2, sold)).status_code == 200
    assert (await coupon(client, sold))["state"] == "SOLD_OUT"  # held by a pending request, or issued
    closed = await create_coupon(client, 3, status="UNPUBLISHABLE")
    assert (await coupon(client, closed))["state"] == "CLOSED"
    expiring = await create_coupon(client, 3, expires_in=timedelta(seconds=1))
    expired = await eventually(
        lambda: coupon(client, expiring), lambda c: c["state"] == "EXPIRED", timeout=10, interval=0.2, what="EXPIRED"
    )
    assert expired["status"] == "PUBLISHABLE"  # the stored status is unchanged; the state says what it is
    reopened = await client.post(f"/api/v1/coupons/{expiring}/open", headers=ADMIN)
    assert_envelope(reopened, 409, "EXPIRED")
    await settle(system.database_url, sold)
    assert (await coupon(client, sold))["issuedCount"] == 1


async def test_coupons_are_listed_by_state_page_by_page(client: httpx.AsyncClient) -> None:
    ids = [await create_coupon(client, 2, status="UNPUBLISHABLE") for _ in range(3)]
    assert (await client.get("/api/v1/coupons")).status_code == 401
    seen: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"state": "CLOSED", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/coupons", params=params, headers=ADMIN)).json()["data"]
        assert len(page["items"]) <= 2
        assert {c["state"] for c in page["items"]} <= {"CLOSED"}
        seen += [c["id"] for c in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True)  # newest first, no repeats across pages
    assert set(ids) <= set(seen)
    both = await client.get("/api/v1/coupons", params=[("state", "OPEN"), ("state", "CLOSED")], headers=ADMIN)
    assert {c["state"] for c in both.json()["data"]["items"]} <= {"OPEN", "CLOSED"}

    for params in ({"cursor": "garbage!"}, {"cursor": "WyJob2xkZXJzIl0"}, {"state": "NOPE"}, {"limit": 0}):
        bad = await client.get("/api/v1/coupons", params=params, headers=ADMIN)
        assert_envelope(bad, 400, "INVALID_REQUEST")
        assert next(iter(params)) in bad.json()["message"]


async def test_raising_the_quantity_during_a_drop_admits_more_at_once_and_lowering_stops_at_the_floor(
    system: System, client: httpx.AsyncClient
) -> None:
    coupon_id = await create_coupon(client, 2)
    assert [(await publish(client, u, coupon_id)).status_code for u in (11, 12, 13)] == [200, 200, 409]
    raised = await client.patch(f"/api/v1/coupons/{coupon_id}", json={"quantity": 3}, headers=ADMIN)
    assert raised.status_code == 200, raised.text
    assert (raised.json()["data"]["quantity"], raised.json()["data"]["state"]) in {(3, "OPEN"), (3, "SOLD_OUT")}
    assert (await publish(client, 13, coupon_id)).status_code == 200  # at once: no rebuild, no delay

    too_low = await client.patch(
        f"/api/v1/coupons/{coupon_id}", json={"quantity": 2}, headers={**ADMIN, "X-Actor": "ops-kim"}
    )
    assert_envelope(too_low, 409, "QUANTITY_BELOW_FLOOR")
    assert too_low.json()["data"]["floor"] == 3
    renamed = await client.patch(
        f"/api/v1/coupons/{coupon_id}", json={"name": "renamed", "opensAt": None}, headers={**ADMIN, "X-Actor": "kim"}
    )
    assert renamed.json()["data"]["name"] == "renamed"

    await settle(system.database_url, coupon_id)
    changes = (await client.get(f"/api/v1/coupons/{coupon_id}/changes", headers=ADMIN)).json()["data"]["items"]
    assert [(c["action"], c["actor"]) for c in changes] == [
        ("CREATE", "api:admin"),
        ("UPDATE", "api:admin"),
        ("UPDATE", "api:kim"),
    ]
    assert (changes[1]["before"]["quantity"], changes[1]["after"]["quantity"]) == (2, 3)
    assert (changes[2]["before"]["name"], changes[2]["after"]["name"]) != ("renamed", "renamed")
    assert changes[0]["before"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": "3"}, "quantity"),
        ({"quantity": None}, "quantity"),
        ({"expiredAt": "2000-01-01T00:00:00Z"}, "expiredAt"),
        ({"coupon_name": "x"}, "coupon_name"),
    ],
)
async def test_a_bad_change_is_a_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    coupon_id = await create_coupon(client, 2)
    response = await client.patch(f"/api/v1/coupons/{coupon_id}", json=body, headers=ADMIN)
    assert_envelope(response, 400, "INVALID_REQUEST")
    assert field in response.json()["message"]


async def test_unknown_coupons_are_404_on_every_admin_route(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("PATCH", "/api/v1/coupons/987654321"),
        ("GET", "/api/v1/coupons/987654321/holders"),
        ("GET", "/api/v1/coupons/987654321/requests"),
        ("GET", "/api/v1/coupons/987654321/changes"),
    ]:
        response = await client.request(method, path, json={"name": "x"} if method == "PATCH" else None, headers=ADMIN)
        assert_envelope(response, 404, "UNKNOWN_COUPON")
        assert (await client.request(method, path, json={"name": "x"})).status_code == 401


async def test_holders_and_requests_page_by_page_and_as_csv(system: System, client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, 3)
    for user in (21, 22, 23, 24):
        await publish(client, user, coupon_id)
    await settle(system.database_url, coupon_id)

    first = (await client.get(f"/api/v1/coupons/{coupon_id}/holders?limit=2", headers=ADMIN)).json()["data"]
    rest = await client.get(
        f"/api/v1/coupons/{coupon_id}/holders", params={"cursor": first["nextCursor"]}, headers=ADMIN
    )
    holders = [h["userId"] for h in first["items"] + rest.json()["data"]["items"]]
    assert sorted(holders) == [21, 22, 23]
    assert rest.json()["data"]["nextCursor"] is None

    as_csv = await client.get(f"/api/v1/coupons/{coupon_id}/holders?format=csv", headers=ADMIN)
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [int(r["userId"]) for r in rows] == holders
    assert set(rows[0]) == {"userId", "requestId", "issuedAt"}

    requests = (await client.get(f"/api/v1/coupons/{coupon_id}/requests", headers=ADMIN)).json()["data"]["items"]
    assert sorted(r["userId"] for r in requests) == [21, 22, 23]  # user 24 was refused at the gate: no request
    issued = await client.get(f"/api/v1/coupons/{coupon_id}/requests?status=ISSUED&format=csv", headers=ADMIN)
    assert len(list(csv.DictReader(io.StringIO(issued.text)))) == 3
    wrong_kind = await client.get(
        f"/api/v1/coupons/{coupon_id}/requests", params={"cursor": first["nextCursor"]}, headers=ADMIN
    )
    assert_envelope(wrong_kind, 400, "INVALID_REQUEST")  # a holders cursor is no requests cursor
    assert_envelope(
        await client.get(f"/api/v1/coupons/{coupon_id}/holders?format=xml", headers=ADMIN), 400, "INVALID_REQUEST"
    )


async def test_the_cli_schedules_shows_states_and_changes_a_coupon(system: System, client: httpx.AsyncClient) -> None:
    made = cli(
        system,
        "coupons",
        "create",
        "--name",
        "cli drop",
        "--quantity",
        "4",
        "--opens-in",
        "10m",
        "--expires-in",
        "1h",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    [coupon] = json.loads(made.stdout)
    assert (coupon["state"], coupon["pendingCount"], coupon["availableQuantity"]) == ("SCHEDULED", 0, 4)
    assert coupon["opensAt"] is not None
    refused = await publish(client, 71, coupon["id"])
    assert_envelope(refused, 409, "NOT_OPEN")
    assert 595 <= int(refused.headers["Retry-After"]) <= 600

    listed = json.loads(cli(system, "coupons", "list", "--state", "SCHEDULED", "--json").stdout)
    assert coupon["id"] in [c["id"] for c in listed]
    assert {c["state"] for c in listed} == {"SCHEDULED"}

    opened = cli(system, "coupons", "update", str(coupon["id"]), "--no-schedule", "--quantity", "6", "--json")
    assert opened.returncode == 0, opened.stderr
    [changed] = json.loads(opened.stdout)
    assert (changed["state"], changed["quantity"], changed["opensAt"]) == ("OPEN", 6, None)
    assert (await publish(client, 71, coupon["id"])).status_code == 200  # the gate followed at once

    too_low = cli(system, "coupons", "update", str(coupon["id"]), "--quantity", "0")
    assert too_low.returncode == 2  # invalid input
    shown = json.loads(cli(system, "coupons", "show", str(coupon["id"]), "--json").stdout)
    assert shown["state"] == "OPEN"
    changes = (await client.get(f"/api/v1/coupons/{coupon['id']}/changes", headers=ADMIN)).json()["data"]["items"]
    assert [c["action"] for c in changes] == ["CREATE", "UPDATE"]
    assert changes[0]["actor"].startswith("cli:")
    assert cli(system, "coupons", "update", "987654321", "--name", "x").returncode == 1
