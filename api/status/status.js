// tcpfault status page: polls the admin API once a second and acts through it. Plain
// JavaScript, no framework and no build step; every value from the API goes into the page as
// text (textContent), never as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const PAGE_SIZE = 50;        // connections per page (the API pages by id)
  const TIMELINE_KEEP = 300;   // entries kept in the page
  const TOKEN_KEY = "tcpfault.token";

  // Fault presets for one connection; the text is editable before it is applied.
  const PRESETS = [
    ["reset both sides (RST)", { type: "reset" }],
    ["reset the client only", { type: "reset", to: "client" }],
    ["reset the server only", { type: "reset", to: "server" }],
    ["close: FIN, then RST (10053)", { type: "close" }],
    ["close: client fin_then_reset, server reset_now", { type: "close", client: "fin_then_reset", server: "reset_now" }],
    ["stall both directions for 5 s", { type: "stall", duration: "5s" }],
    ["stall downstream forever", { type: "stall", direction: "downstream" }],
    ["latency 500 ms downstream", { type: "latency", delay: "500ms" }],
    ["bandwidth 10 KiB/s downstream", { type: "bandwidth", rate: "10KiB/s" }],
    ["slice into 1-16 byte pieces", { type: "slice", size: "1-16", delay: "10ms" }],
    ["clamp: read 1 byte at a time", { type: "clamp", read_size: 1 }],
    ["idle timeout 5 s, then reset", { type: "idle", timeout: "5s" }],
    ["slow close: hold the FIN 2 s", { type: "slow_close", delay: "2s" }],
  ];

  const $ = (id) => document.getElementById(id);
  const state = {
    proxies: [],
    selected: null,        // proxy whose connections are shown
    cursors: [0],          // `after` of each page visited; the last is the current page
    nextAfter: null,       // `after` of the next page, when there is one
    eventsNext: null,      // the events cursor (null: not loaded yet)
    eventsCapacity: 0,
    eventsDropped: 0,      // events this page never saw
    busy: false,
    pendingAction: null,   // an action waiting for the token dialog
    faultConn: null,
  };

  // ------------------------------------------------------------------------------------------
  // formatting

  function bytes(n) {
    if (n < 1024) return n + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(v < 10 ? 1 : 0) + " " + units[i];
  }
  function age(s) {
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " m " + Math.floor(s % 60) + " s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + (m % 60) + " m";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }
  function count(n) { return Number(n).toLocaleString("en-US"); }
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  // ------------------------------------------------------------------------------------------
  // the API

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (method !== "GET" && token) headers["Authorization"] = "Bearer " + token;
    let payload;
    if (body !== undefined) {
      headers["Content-Type"] = typeof body === "string" ? "application/yaml" : "application/json";
      payload = typeof body === "string" ? body : JSON.stringify(body);
    }
    const r = await fetch(path, { method, headers, body: payload, cache: "no-store" });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!r.ok) throw new ApiError(r.status, (data && data.error) || r.status + " " + r.statusText);
    return { data, headers: r.headers };
  }

  // A state-changing call: asks for the token once if the API wants one, then retries.
  async function act(method, path, body) {
    try {
      const r = await api(method, path, body);
      hideNotice();
      return r;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        return new Promise((resolve, reject) => {
          state.pendingAction = { method, path, body, resolve, reject };
          openToken(sessionStorage.getItem(TOKEN_KEY) ? "The token was not accepted: enter it again." : null);
        });
      }
      showNotice(method + " " + path + ": " + e.message);
      throw e;
    }
  }

  function showNotice(text) { $("notice-text").textContent = text; $("notice").hidden = false; }
  function hideNotice() { $("notice").hidden = true; }

  // ------------------------------------------------------------------------------------------
  // proxies and rules

  function renderProxies() {
    const box = $("proxies");
    box.replaceChildren();
    if (state.proxies.length === 0) {
      box.append(el("p", { class: "empty", text: "no proxies" }));
      return;
    }
    for (const p of state.proxies) {
      const rules = el("tbody");
      for (const r of p.rules) {
        const sw = el("input", {
          type: "checkbox", class: "switch rule-switch", checked: r.enabled,
          title: (r.enabled ? "disable " : "enable ") + r.name,
          "data-proxy": p.name, "data-rule": r.name,
        });
        sw.setAttribute("aria-label", "rule " + r.name + " enabled");
        sw.addEventListener("change", () => toggleRule(p.name, r.name, sw));
        rules.append(el("tr", { "data-rule": r.name },
          el("td", {}, sw),
          el("td", {}, el("span", { class: "mono", text: r.name })),
          el("td", {}, el("span", { class: "chip", text: r.fault })),
          el("td", {}, el("span", { class: "badge" + (r.active ? " on" : ""), text: r.active ? "active" : "inactive" })),
          el("td", { class: "num fired", text: count(r.fired) })));
      }
      const rulesTable = p.rules.length
        ? el("table", { class: "rules" },
            el("thead", {}, el("tr", {}, el("th", { text: "on" }), el("th", { text: "rule" }),
              el("th", { text: "fault" }), el("th", { text: "now" }), el("th", { text: "fired" }))),
            rules)
        : el("p", { class: "empty", text: "no rules" });
      const restart = el("button", { type: "button", class: "danger", text: "restart" });
      restart.title = "reset every open connection of " + p.name + " now";
      restart.addEventListener("click", async () => {
        if (!confirm("Reset all " + p.active_connections + " open connections of " + p.name + "?")) return;
        try { await act("POST", "/api/proxies/" + encodeURIComponent(p.name) + "/restart"); } catch (e) { return; }
        refresh();
      });
      box.append(el("article", { class: "card proxy", "data-proxy": p.name },
        el("div", { class: "card-head" },
          el("span", { class: "name", text: p.name }),
          el("span", { class: "chip", text: p.protocol }),
          el("span", { class: "spacer" }),
          restart),
        el("div", { class: "addr", text: p.listen + " → " + p.upstream }),
        el("div", { class: "counters" },
          el("span", {}, "open ", el("b", { class: "active-count", text: count(p.active_connections) })),
          el("span", {}, "accepted ", el("b", { text: count(p.connections_total) })),
          el("span", {}, "↑ ", el("b", { text: bytes(p.bytes_upstream) })),
          el("span", {}, "↓ ", el("b", { text: bytes(p.bytes_downstream) }))),
        rulesTable));
    }
  }

  async function toggleRule(proxy, rule, sw) {
    const want = sw.checked;
    sw.disabled = true;
    try {
      await act("POST", "/api/proxies/" + encodeURIComponent(proxy) + "/rules/" +
        encodeURIComponent(rule) + "/" + (want ? "enable" : "disable"));
    } catch (e) {
      sw.checked = !want;
    }
    sw.disabled = false;
    refresh();
  }

  function renderProxySelect() {
    const sel = $("conn-proxy");
    const names = state.proxies.map((p) => p.name);
    if (state.selected === null || !names.includes(state.selected)) {
      state.selected = names.length ? names[0] : null;
      state.cursors = [0];
    }
    const current = Array.from(sel.options).map((o) => o.value + "|" + o.textContent).join(",");
    const wanted = state.proxies.map((p) => p.name + "|" + p.name + " (" + count(p.active_connections) + ")").join(",");
    if (current !== wanted) {
      sel.replaceChildren(...state.proxies.map((p) =>
        el("option", { value: p.name, text: p.name + " (" + count(p.active_connections) + ")" })));
    }
    sel.value = state.selected || "";
  }

  // ------------------------------------------------------------------------------------------
  // connections

  function renderConnections(list, total) {
    const body = $("conns").tBodies[0];
    body.replaceChildren();
    const after = state.cursors[state.cursors.length - 1];
    if (list.length === 0) {
      body.append(el("tr", {}, el("td", { colSpan: 10, class: "empty", text: "no open connections" })));
    }
    for (const c of list) {
      const ending = c.state.startsWith("ending");
      const faults = el("td", { "data-label": "faults", class: "faults" });
      for (const f of c.faults) {
        faults.append(el("span", { class: "chip" + (f.rule.startsWith("@") ? " api" : ""), text: f.fault, title: "by " + f.rule }));
      }
      const rules = el("td", { "data-label": "rules" });
      for (const r of c.rules) rules.append(el("span", { class: "chip", text: r }));
      const reset = el("button", { type: "button", class: "danger act-reset", text: "reset", disabled: ending });
      reset.title = "RST both sides now (DELETE)";
      reset.addEventListener("click", () => connAction("DELETE", c.id, ""));
      const fault = el("button", { type: "button", class: "quiet act-fault", text: "fault…", disabled: ending || !c.state.startsWith("open") });
      fault.addEventListener("click", () => openFault(c.id));
      const lift = el("button", { type: "button", class: "quiet act-lift", text: "lift", disabled: ending || !c.faults.some((f) => f.rule.startsWith("@")) });
      lift.title = "lift the stages applied from here (latency, stall, ...)";
      lift.addEventListener("click", () => connAction("DELETE", c.id, "/fault"));
      body.append(el("tr", { class: "conn" + (ending ? " ending" : ""), "data-conn-id": String(c.id) },
        el("td", { class: "num", "data-label": "id", text: String(c.id) }),
        el("td", { class: "mono", "data-label": "client", text: c.client }),
        el("td", { class: "num", "data-label": "age", text: age(c.age_seconds) }),
        el("td", { class: "num", "data-label": "bytes ↑", text: bytes(c.bytes_upstream) }),
        el("td", { class: "num", "data-label": "bytes ↓", text: bytes(c.bytes_downstream) }),
        el("td", { class: "num", "data-label": "worker", text: String(c.worker) }),
        el("td", { class: "state", "data-label": "state", text: c.state }),
        rules, faults,
        el("td", { class: "actions", "data-label": "" }, reset, fault, lift)));
    }
    const first = list.length ? "ids " + list[0].id + "–" + list[list.length - 1].id : "none";
    $("conn-summary").textContent = state.selected === null ? "" :
      count(total) + " open; showing " + list.length + " (" + first + (after ? ", after id " + after : "") +
      "), oldest first, " + PAGE_SIZE + " a page";
    $("page-first").disabled = state.cursors.length <= 1;
    $("page-prev").disabled = state.cursors.length <= 1;
    $("page-next").disabled = state.nextAfter === null;
  }

  async function connAction(method, id, suffix, body) {
    const path = "/api/proxies/" + encodeURIComponent(state.selected) + "/connections/" + id + suffix;
    try { await act(method, path, body); } catch (e) { return false; }
    refresh();
    return true;
  }

  // ------------------------------------------------------------------------------------------
  // the timeline

  function renderEvents(events) {
    const list = $("timeline");
    for (const e of events) {
      const who = e.proxy + (e.conn ? " #" + e.conn : "") + (e.client ? " (" + e.client + ")" : "");
      const parts = [who];
      if (e.fault) parts.push(e.fault);
      if (e.rule) parts.push("by " + e.rule);
      if (e.detail) parts.push(e.detail);
      if (e.kind === "fault" && e.conn) parts.push("after ↑" + bytes(e.bytes_upstream) + " ↓" + bytes(e.bytes_downstream));
      const time = el("time", { text: e.time.slice(11, 23) });
      time.dateTime = e.time;
      list.prepend(el("li", { class: "event", "data-seq": String(e.seq), "data-kind": e.kind, "data-conn": String(e.conn) },
        time,
        el("span", { class: "kind kind-" + e.kind, text: e.kind }),
        el("span", { class: "what", text: parts.join(" · ") })));
    }
    while (list.children.length > TIMELINE_KEEP) list.lastElementChild.remove();
    if (!state.eventsDropped) {
      $("timeline-note").textContent = list.children.length === 0 ? "no faults injected yet"
        : "newest first; tcpfault keeps the last " + count(state.eventsCapacity) + " events";
    }
  }

  async function pollEvents() {
    if (state.eventsNext === null) {
      const { data } = await api("GET", "/api/events?limit=100");
      state.eventsNext = data.next;
      state.eventsCapacity = data.capacity;
      renderEvents(data.events);
      return;
    }
    // Catch up in pages; a page that could not keep up says how many it missed.
    for (let i = 0; i < 5; i++) {
      const { data } = await api("GET", "/api/events?after=" + state.eventsNext + "&limit=1000");
      if (data.dropped > 0) {
        state.eventsDropped += data.dropped;
        $("timeline-note").textContent = count(state.eventsDropped) +
          " events came and went faster than this page read them (tcpfault keeps the last " +
          count(data.capacity) + ")";
      }
      state.eventsNext = data.next;
      renderEvents(data.events);
      if (!data.more) break;
    }
  }

  // ------------------------------------------------------------------------------------------
  // polling

  async function refresh() {
    if (state.busy) return;
    state.busy = true;
    try {
      const { data: proxies } = await api("GET", "/api/proxies");
      state.proxies = proxies;
      renderProxies();
      renderProxySelect();
      if (state.selected !== null) {
        const after = state.cursors[state.cursors.length - 1];
        const { data, headers } = await api("GET", "/api/proxies/" + encodeURIComponent(state.selected) +
          "/connections?limit=" + PAGE_SIZE + "&after=" + after);
        const total = Number(headers.get("X-Total-Count") || data.length);
        state.nextAfter = /rel="next"/.test(headers.get("Link") || "") && data.length
          ? data[data.length - 1].id : null;
        if (data.length === 0 && state.cursors.length > 1) {
          state.cursors.pop();  // the page emptied: back to the previous one
        }
        renderConnections(data, total);
      } else {
        renderConnections([], 0);
      }
      await pollEvents();
      $("live").textContent = "live · " + new Date().toLocaleTimeString();
      $("live").className = "live ok";
    } catch (e) {
      $("live").textContent = "cannot reach the admin API: " + e.message;
      $("live").className = "live down";
    } finally {
      state.busy = false;
    }
  }

  // ------------------------------------------------------------------------------------------
  // dialogs

  function openFault(id) {
    state.faultConn = id;
    $("fault-conn").textContent = "#" + id + " (" + state.selected + ")";
    $("fault-error").hidden = true;
    $("fault-preset").value = "0";
    $("fault-body").value = JSON.stringify(PRESETS[0][1]);
    $("fault-dialog").showModal();
  }

  async function applyFault() {
    const text = $("fault-body").value.trim();
    let body = text;
    try { body = JSON.parse(text); } catch (e) { /* YAML: sent as it is */ }
    const path = "/api/proxies/" + encodeURIComponent(state.selected) + "/connections/" + state.faultConn + "/fault";
    try {
      await api("POST", path, body);
      $("fault-dialog").close();
      hideNotice();
      refresh();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        $("fault-dialog").close();
        state.pendingAction = { method: "POST", path, body, resolve: () => refresh(), reject: () => {} };
        openToken(sessionStorage.getItem(TOKEN_KEY) ? "The token was not accepted: enter it again." : null);
        return;
      }
      $("fault-error").textContent = e.message;
      $("fault-error").hidden = false;
    }
  }

  function openToken(why) {
    $("token-why").textContent = why || "This tcpfault has admin.token set: changes need it. " +
      "It is kept for this browser tab only (sessionStorage).";
    $("token-input").value = "";
    $("token-dialog").showModal();
    $("token-input").focus();
  }

  function finishPending(retry) {
    const p = state.pendingAction;
    state.pendingAction = null;
    if (!p) return;
    if (!retry) {
      showNotice(p.method + " " + p.path + ": needs the admin token");
      p.reject(new ApiError(401, "no token"));
      return;
    }
    act(p.method, p.path, p.body).then(p.resolve, p.reject);
  }

  function setup() {
    $("fault-preset").replaceChildren(...PRESETS.map(([name], i) => el("option", { value: String(i), text: name })));
    $("fault-preset").addEventListener("change", () => {
      $("fault-body").value = JSON.stringify(PRESETS[Number($("fault-preset").value)][1]);
    });
    $("fault-form").addEventListener("submit", (ev) => { ev.preventDefault(); applyFault(); });
    $("fault-cancel").addEventListener("click", () => $("fault-dialog").close());

    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token-input").value.trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      $("token-dialog").close();
      finishPending(Boolean(t));
    });
    $("token-cancel").addEventListener("click", () => { $("token-dialog").close(); finishPending(false); });
    $("token-clear").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("token-dialog").close();
      finishPending(false);
    });
    $("token-dialog").addEventListener("cancel", () => finishPending(false));
    $("token-button").addEventListener("click", () => openToken(null));

    $("notice-close").addEventListener("click", hideNotice);
    $("conn-proxy").addEventListener("change", () => {
      state.selected = $("conn-proxy").value;
      state.cursors = [0];
      refresh();
    });
    $("page-next").addEventListener("click", () => {
      if (state.nextAfter === null) return;
      state.cursors.push(state.nextAfter);
      refresh();
    });
    $("page-prev").addEventListener("click", () => { if (state.cursors.length > 1) state.cursors.pop(); refresh(); });
    $("page-first").addEventListener("click", () => { state.cursors = [0]; refresh(); });

    refresh();
    setInterval(() => { if (!$("pause").checked && !document.hidden) refresh(); }, POLL_MS);
  }

  setup();
})();
