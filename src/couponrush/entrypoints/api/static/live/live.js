// couponrush live view: one EventSource (/live/events, session cookie), one tick a second, drawn with the DOM
// and inline SVG. No framework, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const series = new Map(); // coupon id -> {accepted: Map(second -> n), issued: Map(second -> n)}
let source = null;
let windowS = 300;

function show(signedIn) {
  $("signin").hidden = signedIn;
  $("signout").hidden = !signedIn;
}

async function start() {
  const answer = await fetch("/live/session", { credentials: "same-origin" });
  if (answer.ok) {
    show(true);
    connect();
  } else {
    show(false);
  }
}

function connect() {
  if (source) source.close();
  source = new EventSource("/live/events");
  source.addEventListener("tick", (event) => render(JSON.parse(event.data)));
  source.onopen = () => setConnection("live", "live");
  source.onerror = async () => {
    setConnection("reconnecting…", "down");
    const answer = await fetch("/live/session", { credentials: "same-origin" });
    if (answer.status === 401) {
      source.close();
      show(false);
    }
  };
}

function setConnection(text, kind) {
  const conn = $("conn");
  conn.textContent = text;
  conn.className = "conn " + kind;
}

function merge(store, points, full, now) {
  if (full) store.clear();
  for (const [second, n] of points) store.set(second, n);
  for (const second of store.keys()) if (second < now - windowS) store.delete(second);
}

function field(card, name, value) {
  const node = card.querySelector(`[data-field="${name}"]`);
  if (node && node.textContent !== String(value)) node.textContent = value;
}

// The chart spans from a little before the first second with data (at least a minute) up to the window.
function span(stores, now) {
  let first = now;
  for (const store of stores) for (const second of store.keys()) first = Math.min(first, second);
  return Math.min(windowS, Math.max(60, now - first + 10));
}

function line(store, now, max, shown) {
  const points = [];
  for (let second = now - shown; second <= now; second++) {
    const x = ((second - (now - shown)) / shown) * 600;
    const y = 118 - ((store.get(second) || 0) / max) * 112;
    points.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  }
  return points.join(" ");
}

function when(coupon, nowMs) {
  if (coupon.state === "SCHEDULED" && coupon.opensAt) {
    const left = Math.max(0, Math.round((Date.parse(coupon.opensAt) - nowMs) / 1000));
    return `opens in ${left} s`;
  }
  return `expires ${new Date(coupon.expiredAt).toLocaleString()}`;
}

function render(tick) {
  windowS = tick.windowS;
  const nowMs = Date.parse(tick.at);
  const now = Math.floor(nowMs / 1000);
  $("p99").textContent = tick.httpP99Ms === null ? "–" : `${tick.httpP99Ms} ms`;
  $("lag").textContent = tick.lag;
  $("updated").textContent = new Date(nowMs).toLocaleTimeString();
  const main = $("coupons");
  const seen = new Set();
  tick.coupons.forEach((coupon, index) => {
    seen.add(String(coupon.id));
    let card = main.querySelector(`[data-coupon-id="${coupon.id}"]`);
    if (!card) {
      card = $("coupon-card").content.firstElementChild.cloneNode(true);
      card.dataset.couponId = coupon.id;
    }
    if (main.children[index] !== card) main.insertBefore(card, main.children[index] || null);
    if (!series.has(coupon.id)) series.set(coupon.id, { accepted: new Map(), issued: new Map() });
    const own = series.get(coupon.id);
    merge(own.accepted, coupon.acceptedPerS, tick.full, now);
    merge(own.issued, coupon.issuedPerS, tick.full, now);

    field(card, "id", `#${coupon.id}`);
    field(card, "name", coupon.name);
    const badge = card.querySelector('[data-field="state"]');
    badge.textContent = coupon.state;
    badge.className = "badge " + coupon.state;
    card.dataset.state = coupon.state;
    field(card, "when", when(coupon, nowMs));
    for (const name of ["issued", "pending", "available", "quantity", "lag", "inOutbox"]) field(card, name, coupon[name]);
    const quantity = Math.max(1, coupon.quantity);
    card.querySelector('[data-part="issued"]').style.width = `${(100 * coupon.issued) / quantity}%`;
    card.querySelector('[data-part="pending"]').style.width = `${(100 * coupon.pending) / quantity}%`;
    // The last whole second: the current one is still filling.
    field(card, "acceptedRate", own.accepted.get(now - 1) || 0);
    field(card, "issuedRate", own.issued.get(now - 1) || 0);
    let peak = 1;
    for (const store of [own.accepted, own.issued]) for (const n of store.values()) peak = Math.max(peak, n);
    const shown = span([own.accepted, own.issued], now);
    field(card, "peak", peak);
    field(card, "window", shown >= 120 ? `${Math.round(shown / 60)} min` : `${shown} s`);
    card.querySelector('[data-line="accepted"]').setAttribute("points", line(own.accepted, now, peak, shown));
    card.querySelector('[data-line="issued"]').setAttribute("points", line(own.issued, now, peak, shown));
  });
  for (const card of [...main.children]) {
    if (!seen.has(card.dataset.couponId)) {
      series.delete(Number(card.dataset.couponId));
      card.remove();
    }
  }
  $("empty").hidden = tick.coupons.length > 0;
}

$("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = await fetch("/live/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  $("token").value = "";
  if (answer.ok) {
    $("signin-error").textContent = "";
    show(true);
    connect();
  } else {
    $("signin-error").textContent = "That is not the admin token.";
  }
});

$("signout").addEventListener("click", async () => {
  await fetch("/live/session", { method: "DELETE", credentials: "same-origin" });
  if (source) source.close();
  show(false);
  setConnection("signed out", "down");
});

start();
