"use strict";
// The status page: fetches /v1/quotas (every page) and draws each key's
// limits as bars, again every few seconds (?refresh=SECONDS, default 2).
(function () {
  const params = new URLSearchParams(location.search);
  const refresh = Math.max(Number(params.get("refresh")) || 2, 0.1) * 1000;
  const root = document.getElementById("upstreams");

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  // span returns an element holding one number, findable by its class.
  function span(cls, text) { return el("span", cls, text); }

  // dur writes a number of seconds the way a person reads it.
  function dur(s) {
    if (s < 10) return s.toFixed(1) + "s";
    if (s < 120) return Math.ceil(s) + "s";
    if (s < 3600) return Math.ceil(s / 60) + "m";
    if (s < 172800) return Math.floor(s / 3600) + "h" + Math.ceil((s % 3600) / 60) + "m";
    return Math.ceil(s / 86400) + "d";
  }

  // rel says how far t is from now, the server's clock.
  function rel(t, now) {
    const ms = Date.parse(t) - Date.parse(now);
    return ms > 0 ? "in " + dur(ms / 1000) : "now";
  }

  async function fetchAll() {
    let keys = [], now = null, cursor = "";
    for (let i = 0; i < 50; i++) {
      const url = "v1/quotas?limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      const resp = await fetch(url, { cache: "no-store" });
      if (!resp.ok) throw new Error("/v1/quotas answered " + resp.status);
      const page = await resp.json();
      now = now || page.now;
      keys = keys.concat(page.keys);
      if (!page.next_cursor) break;
      cursor = page.next_cursor;
    }
    return { now: now, keys: keys };
  }

  function drawLimit(l, now) {
    const row = el("div", "limit");
    row.dataset.limit = l.limit;
    row.dataset.source = l.source;
    const name = el("span", "name", l.limit);
    if (l.source !== "config") name.append(" ", el("small", "", l.source));
    const bar = el("div", "bar");
    const fill = el("div", "fill");
    const share = l.count > 0 ? Math.min(l.used / l.count, 1) : 0;
    fill.style.width = (share * 100).toFixed(1) + "%";
    if (share >= 1) fill.classList.add("full");
    else if (share >= 0.8) fill.classList.add("warn");
    bar.append(fill);
    const text = el("span", "numbers");
    text.append(span("used", l.used), "/", span("count", l.count), " used · ",
      span("remaining", l.remaining), " left · next free ", span("next-free", rel(l.next_free, now)));
    row.append(name, bar, text);
    return row;
  }

  function drawKey(k, now) {
    const box = el("div", "key");
    box.dataset.key = k.key;
    box.dataset.identity = k.identity;
    const head = el("div", "key-head");
    head.append(el("code", "", k.key), el("span", "identity", k.identity));
    const queued = el("span", "badge", "");
    queued.append("queue ", span("queued", k.queued));
    head.append(queued);
    if (k.in_flight > 0) head.append(el("span", "badge", k.in_flight + " in flight"));
    const cool = el("span", "badge" + (k.cooldown_seconds > 0 ? " hot" : ""), "");
    cool.append("cooldown ", span("cooldown", k.cooldown_seconds > 0 ? dur(k.cooldown_seconds) : "none"));
    head.append(cool);
    if (Date.parse(k.next_free) > Date.parse(now)) {
      const next = el("span", "badge", "");
      next.append("next request ", span("key-next-free", rel(k.next_free, now)));
      head.append(next);
    }
    if (k.probing) head.append(el("span", "badge", "probing"));
    if (k.error) head.append(el("span", "badge hot", k.error));
    box.append(head);
    for (const l of k.limits) box.append(drawLimit(l, now));
    if (k.limits.length === 0 && !k.error) box.append(el("div", "learned", "no limit configured or learned"));
    if (k.learned && k.learned.remaining !== undefined) {
      const p = el("div", "learned");
      p.append("upstream reports ", span("learned-remaining", k.learned.remaining), " left, reset " + rel(k.learned.reset_at, now));
      box.append(p);
    }
    return box;
  }

  function draw(data) {
    const groups = new Map();
    for (const k of data.keys) {
      if (!groups.has(k.upstream)) groups.set(k.upstream, []);
      groups.get(k.upstream).push(k);
    }
    const sections = [];
    for (const [name, keys] of groups) {
      const sec = el("section", "upstream");
      sec.dataset.upstream = name;
      const h = el("h2", "", name);
      h.append(el("span", "count", keys.length + (keys.length === 1 ? " key" : " keys")));
      sec.append(h);
      for (const k of keys) sec.append(drawKey(k, data.now));
      sections.push(sec);
    }
    root.replaceChildren(...sections);
    document.getElementById("empty").hidden = data.keys.length > 0;
    document.getElementById("summary").textContent =
      groups.size + (groups.size === 1 ? " upstream, " : " upstreams, ") + data.keys.length + (data.keys.length === 1 ? " key" : " keys");
    document.getElementById("updated").textContent = "updated " + new Date(data.now).toLocaleTimeString();
  }

  async function tick() {
    const errBox = document.getElementById("error");
    try {
      draw(await fetchAll());
      errBox.hidden = true;
      document.body.dataset.state = "ok";
      document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
    } catch (e) {
      errBox.textContent = "Cannot read the proxy's quotas: " + e.message + " (retrying)";
      errBox.hidden = false;
      document.body.dataset.state = "error";
    }
    setTimeout(tick, refresh);
  }
  tick();
})();
