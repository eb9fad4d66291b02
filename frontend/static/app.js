// sers-monitor live page: one WebSocket, server-rendered fragments swapped in place by id.
// A message is HTML; each top-level element replaces the element with the same id (a new node
// card is inserted in sort order; an element with data-remove deletes its namesake). The page
// keeps no other state, so after a reconnect the hub's full state simply replaces everything.
// Parts are applied together once a second, with the clock: one parse, one getElementById and
// an in-place update per part, and one frame of style, layout and paint for all of them (a
// frame costs the renderer about as much again as the parts it carries). Samples arrive once a
// second, so every one is shown; cards that appear, change state or go apply at once.
(() => {
  "use strict";
  const root = document.documentElement;
  const body = document.body;
  const conn = document.getElementById("conn");
  const clock = document.getElementById("clock");
  const SILENCE_MS = 6000; // the hub sends at least every 2 s; longer silence means it is gone
  const SORT_EVERY_MS = 10000; // status and free-GPU orders settle this often, not on every change
  const STATUS_RANK = { offline: 0, stale: 1, live: 2 };
  let serverOffsetMs = 0; // the hub's clock minus this browser's clock

  function setConn(state, text) {
    if (root.dataset.conn !== state) root.dataset.conn = state;
    if (conn.textContent !== text) conn.textContent = text;
  }

  function ago(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    const m = Math.floor((s % 3600) / 60);
    return Math.floor(s / 3600) + " h " + (m < 10 ? "0" : "") + m + " min";
  }

  // "late by N s" and "last seen N min ago" count on in the browser, without server messages.
  function refreshTimes() {
    const now = (Date.now() + serverOffsetMs) / 1000;
    for (const el of document.querySelectorAll("[data-status=stale] .st, [data-status=offline] .st")) {
      const since = parseFloat(el.dataset.since);
      if (!since) continue;
      const holder = el.closest("[data-status]");
      const text = holder.dataset.status === "stale" ? "late by " + ago(now - since) : "last seen " + ago(now - since) + " ago";
      if (el.textContent !== text) el.textContent = text;
    }
    // "idle 47 min" on idle-held GPU rows and the people board
    for (const el of document.querySelectorAll(".ih[data-since]")) {
      const text = "idle " + ago(now - parseFloat(el.dataset.since));
      if (el.textContent !== text) el.textContent = text;
    }
  }

  function takeServerTime(el) {
    if (el && el.dataset.now) {
      serverOffsetMs = parseFloat(el.dataset.now) * 1000 - Date.now();
      delete el.dataset.now;
    }
  }

  function tickClock() {
    const text = new Date(Date.now() + serverOffsetMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (clock.textContent !== text) clock.textContent = text;
  }

  if (body.dataset.page === "node") {
    nodePage();
    return;
  }
  if (body.dataset.page === "alerts") {
    alertsPage();
    return;
  }

  // ------------------------------------------------------------------ the wall
  const template = document.createElement("template");
  const sortBy = body.dataset.sort || "name";
  const cyclePageMs = parseFloat(body.dataset.cycle || "0") * 1000;
  const pager = document.getElementById("pager");
  let nodes = document.getElementById("nodes");
  let socket = null;
  let lastMessageAt = 0;
  let connectingSince = 0;
  let retryMs = 500;
  let pageIndex = 0;
  let lastSortAt = 0;
  let pending = [];

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + body.dataset.ws;
  }

  // Sort keys: status (problems first) or free GPUs (most first), then group and name.
  function rank(card) {
    if (sortBy === "status") return STATUS_RANK[card.dataset.status] ?? 3;
    if (sortBy === "free") return -card.querySelectorAll(".g.f").length;
    return 0;
  }

  function byKey(a, b) {
    return a[0] - b[0] || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0);
  }

  // Reorders cards in place (the same elements move; nothing is re-created), only if needed.
  function sortCards() {
    lastSortAt = Date.now();
    const cards = Array.from(nodes.children);
    const keyed = cards.map((card) => [rank(card), card.dataset.sort || "", card]).sort(byKey);
    if (keyed.every((entry, i) => entry[2] === cards[i])) return;
    for (const entry of keyed) nodes.appendChild(entry[2]);
  }

  function insertCard(card) {
    if (sortBy === "name") {
      const key = card.dataset.sort || "";
      for (const other of nodes.children) {
        if ((other.dataset.sort || "") > key) {
          nodes.insertBefore(card, other);
          return;
        }
      }
    }
    nodes.appendChild(card); // other orders settle at the next sort
  }

  // Cycle mode: show one screenful of cards at a time, turning pages every ?cycle= seconds.
  function perPage() {
    const cards = nodes.children;
    if (!cards.length) return 1;
    const style = getComputedStyle(nodes);
    const columns = style.gridTemplateColumns.split(" ").length || 1;
    const gap = parseFloat(style.rowGap) || 0;
    let tallest = 0;
    for (const card of cards) if (!card.hidden) tallest = Math.max(tallest, card.offsetHeight);
    if (!tallest) tallest = cards[0].offsetHeight || 200;
    const top = nodes.getBoundingClientRect().top + (parseFloat(style.paddingTop) || 0);
    const rows = Math.max(1, Math.floor((window.innerHeight - top + gap) / (tallest + gap)));
    return columns * rows;
  }

  function applyPage() {
    if (!cyclePageMs) return;
    const cards = nodes.children;
    for (const card of cards) if (card.hidden) card.hidden = false; // measure the full layout
    const size = perPage();
    const pages = Math.max(1, Math.ceil(cards.length / size));
    if (pageIndex >= pages) pageIndex = 0;
    const first = pageIndex * size;
    for (let i = 0; i < cards.length; i++) {
      const hide = i < first || i >= first + size;
      if (cards[i].hidden !== hide) cards[i].hidden = hide;
    }
    pager.hidden = pages < 2;
    pager.textContent = "page " + (pageIndex + 1) + "/" + pages;
  }

  // A pushed part usually differs from the element it replaces in a few texts and classes:
  // change just those (no new elements, so no new style, layout or paint objects). Anything
  // shaped differently is replaced whole.
  function sameShape(a, b) {
    return a.nodeType === b.nodeType && a.nodeName === b.nodeName && a.childNodes.length === b.childNodes.length;
  }

  function morph(old, fresh) {
    if (old.nodeType === 3) {
      if (old.data !== fresh.data) old.data = fresh.data;
      return;
    }
    const names = fresh.getAttributeNames();
    if (old.attributes.length !== names.length) {
      for (const name of old.getAttributeNames()) if (!fresh.hasAttribute(name)) old.removeAttribute(name);
    }
    for (const name of names) {
      const value = fresh.getAttribute(name);
      if (old.getAttribute(name) !== value) old.setAttribute(name, value);
    }
    let a = old.firstChild;
    let b = fresh.firstChild;
    while (a) {
      const nextA = a.nextSibling;
      const nextB = b.nextSibling;
      if (sameShape(a, b)) morph(a, b);
      else a.replaceWith(b);
      a = nextA;
      b = nextB;
    }
  }

  // Cards off the screen (scrolled away, or on another page in cycle mode) need no DOM work:
  // their parts wait here, the newest per element id, until the card comes into view.
  const stash = new Map(); // node id -> Map(element id -> html)
  const inView = new WeakSet(); // cards the observer reports as (nearly) on screen
  const observer = "IntersectionObserver" in window ? new IntersectionObserver(seen, { rootMargin: "0px" }) : null;
  // A card is "node-<name>"; its parts' ids name the kind first and the node last (the scheme
  // and this pattern are frontend/element_ids.py's): group 1 is the node's name.
  const PART_ID = /^(?:host|gpu-[0-9]+|spark-cpu|spark-gpu-[0-9]+)-(.+)$/;
  // parts are never nested in a parts-only message; the people board is a <section> (no div or
  // svg id inside), kept apart from the part before it
  const PART_START = /(?=<(?:div|svg|section) id=")/;

  function seen(entries) {
    let stashed = false;
    for (const entry of entries) {
      const card = entry.target;
      if (!entry.isIntersecting) {
        inView.delete(card);
        continue;
      }
      inView.add(card);
      const parts = stash.get(card.dataset.node);
      if (parts) {
        stash.delete(card.dataset.node);
        for (const part of parts.values()) pending.push(part);
        stashed = true;
      }
    }
    // after any older part of the same card still pending from before it left the screen
    if (stashed) flush();
  }

  // A part applied now makes a stashed older one of the same element void.
  function unstash(id) {
    const match = PART_ID.exec(id);
    const parts = match && stash.get(match[1]);
    if (parts && parts.delete(id) && !parts.size) stash.delete(match[1]);
  }

  // The hub sends parts only of the cards this page shows: those in or near the viewport (on
  // the current page in cycle mode; hidden cards never intersect). It is told the set whenever
  // that changes, at most every 100 ms, and sends a card that joins it whole and current on its
  // next tick. Sorting by free GPUs reads every card's rows, so that page takes every part.
  const SHOW_MAX = 500; // hub/view_show.py MAX_SHOWN_NODES: a page with more in view takes all
  const shown = new Set(); // node ids of the cards in or near the viewport
  const nearby = observer && sortBy !== "free" ? new IntersectionObserver(near, { rootMargin: "25% 0px" }) : null;
  let told = ""; // the last set sent on this connection
  let tellTimer = 0;

  function near(entries) {
    for (const entry of entries) {
      if (entry.isIntersecting) shown.add(entry.target.dataset.node);
      else shown.delete(entry.target.dataset.node);
    }
    if (!tellTimer) tellTimer = setTimeout(tellShown, 100);
  }

  function tellShown() {
    tellTimer = 0;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const text = JSON.stringify({ show: shown.size <= SHOW_MAX ? Array.from(shown).sort() : null });
    if (text === told) return;
    socket.send(text);
    told = text;
  }

  function watch(card) {
    if (observer) observer.observe(card);
    if (nearby) nearby.observe(card);
  }

  // ``removed``: the card leaves the page (not replaced by a newer one of the same node).
  function forget(card, removed) {
    if (observer) observer.unobserve(card);
    if (nearby) nearby.unobserve(card);
    if (removed && shown.delete(card.dataset.node) && !tellTimer) tellTimer = setTimeout(tellShown, 100);
    stash.delete(card.dataset.node); // a card is rendered whole: older parts are void
  }

  function swap(html) {
    template.innerHTML = html;
    let cardsChanged = false;
    let el = template.content.firstElementChild;
    while (el) {
      const next = el.nextElementSibling;
      const id = el.id;
      const old = id ? document.getElementById(id) : null;
      if (el.hasAttribute("data-remove")) {
        if (old) {
          forget(old, true);
          old.remove();
        }
        cardsChanged = true;
      } else if (old) {
        if (old.tagName === "ARTICLE") {
          el.hidden = old.hidden; // keep its place in cycle mode
          forget(old);
          old.replaceWith(el);
          watch(el);
          cardsChanged = true;
        } else if (id === "nodes") {
          if (observer) observer.disconnect();
          if (nearby) nearby.disconnect();
          shown.clear(); // the new cards' first intersections fill it again
          told = ""; // the full state: the hub has every card current, tell it the set anew
          stash.clear();
          old.replaceWith(el);
          nodes = el;
          for (const card of nodes.children) watch(card);
          cardsChanged = true;
        } else {
          if (stash.size) unstash(id);
          if (sameShape(old, el)) morph(old, el);
          else old.replaceWith(el);
        }
      } else if (el.tagName === "ARTICLE" && el.dataset.node !== undefined) {
        insertCard(el);
        watch(el);
        cardsChanged = true;
      }
      el = next;
    }
    template.innerHTML = "";
    takeServerTime(document.getElementById("summary"));
    checkWatches();
    if (cardsChanged) {
      if (sortBy !== "name") sortCards();
      applyPage();
      refreshTimes();
    }
  }

  // Parts of cards in view go to the next flush; parts of cards out of view go to the stash.
  function route(text) {
    for (const part of text.split(PART_START)) {
      const start = part.indexOf('id="') + 4;
      const id = part.slice(start, part.indexOf('"', start));
      const match = PART_ID.exec(id);
      const card = match && observer ? document.getElementById("node-" + match[1]) : null;
      if (!card || inView.has(card)) {
        pending.push(part);
        continue;
      }
      let parts = stash.get(match[1]);
      if (!parts) stash.set(match[1], (parts = new Map()));
      parts.set(id, part);
    }
  }

  function flush() {
    if (!pending.length) return;
    const html = pending.join("");
    pending = [];
    swap(html); // later parts of the same id come later in the text: the newest one stays
  }

  // A full state larger than the hub's message size comes in parts cut between cards; its grid
  // says how many follow (data-more). They are joined and swapped as one: never half a grid.
  let fullParts = null;
  let fullPartsLeft = 0;
  const MORE = /^<main id="nodes"[^>]*\sdata-more="(\d+)"/;

  function receive(text) {
    if (text.startsWith('<main id="nodes"')) {
      const more = MORE.exec(text);
      fullParts = more ? [text] : null; // a new full state supersedes one still arriving
      fullPartsLeft = more ? Number(more[1]) : 0;
      if (fullPartsLeft) return;
    } else if (fullPartsLeft) {
      fullParts.push(text);
      if (--fullPartsLeft) return;
      text = fullParts.join("");
      fullParts = null;
    }
    if (text.startsWith('<main id="nodes"')) {
      pending = []; // the full state supersedes everything before it
      flush();
      swap(text);
    } else if (text.includes("<article") || text.includes("<template")) {
      flush(); // cards (new, changed or removed) apply at once, after what came before them
      swap(text);
    } else {
      route(text); // applied by the once-a-second tick
    }
  }

  function connect() {
    setConn(root.dataset.conn === "lost" ? "lost" : "connecting", "connecting…");
    socket = new WebSocket(wsUrl());
    connectingSince = Date.now();
    socket.binaryType = "arraybuffer";
    const decoder = new TextDecoder();
    socket.onopen = () => {
      retryMs = 500;
      lastMessageAt = Date.now();
    };
    socket.onmessage = (event) => {
      lastMessageAt = Date.now();
      setConn("live", "live");
      const text = typeof event.data === "string" ? event.data : decoder.decode(event.data);
      if (text) receive(text);
    };
    socket.onclose = () => {
      socket = null;
      fullParts = null; // the next connection starts with a full state of its own
      fullPartsLeft = 0;
      setConn("lost", "no connection to hub");
      const delay = retryMs / 2 + Math.random() * retryMs;
      retryMs = Math.min(retryMs * 2, 5000);
      setTimeout(connect, delay);
    };
  }

  // A click on a card opens its node's page, keeping the kiosk options (theme) in the URL.
  document.addEventListener("click", (event) => {
    const card = event.target.closest("article[data-node]");
    if (!card || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    location.href = "node/" + encodeURIComponent(card.dataset.node) + location.search;
  });

  setInterval(() => {
    flush();
    tickClock();
    if (socket && socket.readyState === WebSocket.OPEN && Date.now() - lastMessageAt > SILENCE_MS) {
      setConn("lost", "no data from hub");
      socket.close(); // onclose reconnects
    } else if (socket && socket.readyState === WebSocket.CONNECTING && Date.now() - connectingSince > SILENCE_MS) {
      setConn("lost", "no answer from hub"); // e.g. a proxy that holds the upgrade forever
      socket.close(); // onclose reconnects
    }
    refreshTimes();
    if (sortBy !== "name" && Date.now() - lastSortAt >= SORT_EVERY_MS) sortCards();
  }, 1000);

  if (cyclePageMs) {
    body.classList.add("cycling");
    setInterval(() => {
      pageIndex += 1;
      applyPage();
    }, cyclePageMs);
    window.addEventListener("resize", applyPage);
  }

  // ------------------------------------------------------------------ "notify me when N are free"
  // Kept in this browser only (localStorage): no server setup. The summary bar carries the free
  // GPUs per group and model (data-free); a watch notifies once when its count is reached, and
  // again only after it fell below.
  const WATCH_KEY = "sers.freeWatches";
  const watchForm = document.getElementById("watch-form");
  const watchList = document.getElementById("watch-list");

  function loadWatches() {
    try {
      const watches = JSON.parse(localStorage.getItem(WATCH_KEY) || "[]");
      return Array.isArray(watches) ? watches.filter((w) => w && typeof w.model === "string" && w.count > 0) : [];
    } catch (error) {
      return [];
    }
  }

  function saveWatches(watches) {
    localStorage.setItem(WATCH_KEY, JSON.stringify(watches));
  }

  function watchText(w) {
    return "≥ " + w.count + " " + w.model + " free" + (w.group ? " in " + w.group : "");
  }

  function freeCount(free, w) {
    const model = w.model.toLowerCase();
    let count = 0;
    for (const [group, models] of Object.entries(free)) {
      if (w.group && group !== w.group) continue;
      for (const [name, n] of Object.entries(models)) if (name.toLowerCase().includes(model)) count += n;
    }
    return count;
  }

  function checkWatches() {
    const summary = document.getElementById("summary");
    if (!summary || !summary.dataset.free) return;
    let free;
    try {
      free = JSON.parse(summary.dataset.free);
    } catch (error) {
      return;
    }
    const watches = loadWatches();
    let changed = false;
    for (const w of watches) {
      const count = freeCount(free, w);
      const met = count >= w.count;
      if (met && !w.told) {
        if ("Notification" in window && Notification.permission === "granted") {
          new Notification("sers: " + count + " " + w.model + " GPU" + (count > 1 ? "s" : "") + " free", { body: watchText(w), tag: "sers-" + watchText(w) });
        }
        w.told = true;
        changed = true;
      } else if (!met && w.told) {
        w.told = false;
        changed = true;
      }
    }
    if (changed) saveWatches(watches);
  }

  function showWatches() {
    watchList.replaceChildren();
    loadWatches().forEach((w, i) => {
      const item = document.createElement("li");
      item.textContent = watchText(w) + " ";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "remove";
      remove.addEventListener("click", () => {
        const watches = loadWatches();
        watches.splice(i, 1);
        saveWatches(watches);
        showWatches();
      });
      item.append(remove);
      watchList.append(item);
    });
  }

  // the wall's top bar has the form; a page without one (/users) only checks the watches
  if (watchForm) {
    document.getElementById("watch-open").addEventListener("click", () => {
      watchForm.hidden = !watchForm.hidden;
      showWatches();
    });
    watchForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(watchForm);
      const watches = loadWatches();
      watches.push({ count: Math.max(1, parseInt(data.get("count"), 10) || 1), model: String(data.get("model")).trim(), group: String(data.get("group") || "").trim(), told: false });
      saveWatches(watches);
      showWatches();
      if ("Notification" in window && Notification.permission === "default") Notification.requestPermission().then(checkWatches);
      else checkWatches();
    });
  }

  tickClock();
  checkWatches();
  for (const card of nodes.children) watch(card);
  if (sortBy !== "name") sortCards();
  applyPage();
  connect();

  // ------------------------------------------------------------------ /alerts
  // Server-rendered; silences are made and expired through the API with the admin token.
  function alertsPage() {
    const form = document.getElementById("silence-form");
    if (!form) return;
    const result = document.getElementById("silence-result");
    function headers() {
      const token = form.elements.token.value.trim();
      const h = { "Content-Type": "application/json" };
      if (token) h.Authorization = "Bearer " + token;
      return h;
    }
    async function answer(response) {
      if (response.ok) location.reload();
      else result.textContent = "refused (" + response.status + "): " + (await response.text()).slice(0, 200);
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const silence = { duration_s: parseFloat(data.get("hours")) * 3600, comment: data.get("comment") };
      for (const key of ["rule", "node", "gpu"]) if (data.get(key)) silence[key] = data.get(key);
      answer(await fetch("api/v1/silences", { method: "POST", headers: headers(), body: JSON.stringify(silence) }));
    });
    for (const button of document.querySelectorAll("button[data-expire]")) {
      button.addEventListener("click", async () => {
        answer(await fetch("api/v1/silences/" + encodeURIComponent(button.dataset.expire), { method: "DELETE", headers: headers() }));
      });
    }
  }

  // ------------------------------------------------------------------ a node's own page
  // Server-rendered too: it fetches itself every few seconds and swaps its main element.
  function nodePage() {
    const every = parseInt(body.dataset.refreshMs || "2000", 10);
    const parser = new DOMParser();
    takeServerTime(document.getElementById("detail"));
    async function refresh() {
      const abort = new AbortController(); // a hub that hangs must not leave the page "live"
      const timer = setTimeout(() => abort.abort(), SILENCE_MS);
      try {
        const response = await fetch(location.href, { cache: "no-store", headers: { Accept: "text/html" }, signal: abort.signal });
        if (!response.ok) throw new Error("HTTP " + response.status);
        const fresh = parser.parseFromString(await response.text(), "text/html").getElementById("detail");
        const old = document.getElementById("detail");
        if (fresh && old) {
          old.replaceWith(document.adoptNode(fresh));
          takeServerTime(fresh);
        }
        setConn("live", "live");
      } catch (error) {
        setConn("lost", "no answer from hub");
      } finally {
        clearTimeout(timer);
      }
      refreshTimes();
      setTimeout(refresh, every);
    }
    setInterval(() => {
      tickClock();
      refreshTimes();
    }, 1000);
    tickClock();
    refreshTimes();
    setTimeout(refresh, every);
  }
})();
