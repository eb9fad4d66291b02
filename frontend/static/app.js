// sers-monitor live page: one WebSocket, server-rendered fragments swapped in place by id.
// A message is HTML; each top-level element replaces the element with the same id (a new node
// card is inserted in sort order; an element with data-remove deletes its namesake).
(() => {
  "use strict";
  const root = document.documentElement;
  const nodes = document.getElementById("nodes");
  const conn = document.getElementById("conn");
  const clock = document.getElementById("clock");
  const decoder = new TextDecoder();
  const SILENCE_MS = 6000; // the hub sends at least every 2 s; longer silence means it is gone
  let socket = null;
  let lastMessageAt = 0;
  let retryMs = 500;
  let serverOffsetMs = 0; // server clock minus this browser's clock

  function setConn(state, text) {
    root.dataset.conn = state;
    conn.textContent = text;
  }

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + document.body.dataset.ws;
  }

  function insertCard(card) {
    const key = card.dataset.sort || "";
    for (const other of nodes.children) {
      if ((other.dataset.sort || "") > key) {
        nodes.insertBefore(card, other);
        return;
      }
    }
    nodes.appendChild(card);
  }

  function swap(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    for (const el of Array.from(template.content.children)) {
      const old = el.id ? document.getElementById(el.id) : null;
      if (el.hasAttribute("data-remove")) {
        if (old) old.remove();
      } else if (old) {
        old.replaceWith(el);
      } else if (el.tagName === "ARTICLE" && el.dataset.node !== undefined) {
        insertCard(el);
      }
    }
    const summary = document.getElementById("summary");
    if (summary && summary.dataset.now) {
      serverOffsetMs = parseFloat(summary.dataset.now) * 1000 - Date.now();
      delete summary.dataset.now;
    }
    refreshTimes();
  }

  function ago(seconds) {
    if (seconds < 60) return Math.floor(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  }

  function refreshTimes() {
    const now = (Date.now() + serverOffsetMs) / 1000;
    for (const el of nodes.querySelectorAll("article[data-status=stale] .st, article[data-status=offline] .st")) {
      const since = parseFloat(el.dataset.since);
      if (!since) continue;
      const status = el.closest("article").dataset.status;
      el.textContent = status === "stale" ? "late by " + ago(now - since) : "last seen " + ago(now - since) + " ago";
    }
  }

  function connect() {
    setConn(root.dataset.conn === "lost" ? "lost" : "connecting", "connecting…");
    socket = new WebSocket(wsUrl());
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      retryMs = 500;
      lastMessageAt = Date.now();
    };
    socket.onmessage = (event) => {
      lastMessageAt = Date.now();
      if (root.dataset.conn !== "live") setConn("live", "live");
      const text = typeof event.data === "string" ? event.data : decoder.decode(event.data);
      if (text) swap(text);
    };
    socket.onclose = () => {
      socket = null;
      setConn("lost", "hub connection lost");
      const delay = retryMs / 2 + Math.random() * retryMs;
      retryMs = Math.min(retryMs * 2, 10000);
      setTimeout(connect, delay);
    };
  }

  setInterval(() => {
    clock.textContent = new Date().toLocaleTimeString();
    if (socket && socket.readyState === WebSocket.OPEN && Date.now() - lastMessageAt > SILENCE_MS) {
      setConn("lost", "no data from hub");
      socket.close(); // onclose reconnects
    }
    refreshTimes();
  }, 1000);

  connect();
})();
