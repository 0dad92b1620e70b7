/*
 * Gourmet's admin console.
 *
 * Shows every upstream and its servers, refreshed every second from the
 * JSON API, and lets a signed-in operator change a server's weight and
 * state (drain, disable, enable).
 *
 * The page's Content-Security-Policy allows no inline script or style, so
 * everything is built here with DOM calls and event listeners.  Text that
 * comes from the API is only ever set with textContent (never innerHTML).
 *
 * Rows are built once and then updated in place, never replaced: an input
 * the operator is typing in keeps its focus and its value across refreshes.
 */
"use strict";

(function () {
  /** How often the servers are fetched again. */
  const REFRESH_MS = 1000;
  /** How long one API request may take before it counts as failed. */
  const TIMEOUT_MS = 5000;

  const app = {
    /** The last answer of /api/session; null until (re)loaded. */
    session: null,
    /** Upstream name → its section's elements and rows. */
    sections: new Map(),
    /** When a change last completed: a refresh started before that is stale. */
    lastChangeAt: 0,
    /** Successful refreshes so far (shown as data-refreshes, for tests). */
    refreshes: 0,
    /** Whether an undo is being sent. */
    undoing: false,
  };

  const numberFormat = new Intl.NumberFormat("en");

  // -- small helpers -----------------------------------------------------------

  /**
   * A new element.  `props.text` sets textContent, `props.attrs` sets
   * attributes; children are nodes or strings (added as text).
   */
  function el(tag, props, children) {
    const node = document.createElement(tag);
    const options = props || {};
    if (options.className) node.className = options.className;
    if (options.text !== undefined) node.textContent = options.text;
    for (const [name, value] of Object.entries(options.attrs || {})) {
      node.setAttribute(name, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  /** Sets an element's text only when it changed (no needless DOM work). */
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function pad(number) {
    return String(number).padStart(2, "0");
  }

  /** Unix seconds as local HH:MM:SS. */
  function clockTime(seconds) {
    if (seconds === null || seconds === undefined) return "?";
    const date = new Date(seconds * 1000);
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function milliseconds(value) {
    if (value === null || value === undefined) return "–";
    const digits = value < 10 ? 2 : value < 100 ? 1 : 0;
    return `${value.toFixed(digits)} ms`;
  }

  /** A rate such as 12.5/s, with fewer digits as it grows. */
  function rate(value) {
    return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
  }

  // -- talking to the API --------------------------------------------------------

  /** An HTTP error answer, with the API's description when it gave one. */
  class ApiError extends Error {
    constructor(status, description) {
      super(description);
      this.status = status;
    }
  }

  /**
   * Sends a request to the console's API and returns its JSON answer.
   *
   * @throws ApiError for an error status; TypeError or AbortError when the
   *     console cannot be reached or does not answer in time.
   */
  async function api(path, options) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(path, {
        credentials: "same-origin",
        cache: "no-store",
        signal: controller.signal,
        ...options,
      });
      const document_ = await response.json().catch(() => null);
      if (!response.ok) {
        const description =
          document_ && typeof document_.description === "string"
            ? document_.description
            : `${response.status} ${response.statusText}`;
        throw new ApiError(response.status, description);
      }
      return document_;
    } finally {
      clearTimeout(timer);
    }
  }

  // -- the session: who is signed in, and may they change things -------------------

  function canChange() {
    return Boolean(app.session && app.session.can_change);
  }

  function maxWeight() {
    return (app.session && app.session.max_weight) || 1000;
  }

  function renderSession() {
    const session = app.session;
    const box = document.getElementById("session");
    const note = document.getElementById("read-only");
    box.replaceChildren();
    if (!session) {
      // Not known yet: say nothing rather than something wrong.
      note.hidden = true;
      return;
    }
    if (session.user) {
      box.append(el("span", { className: "user", text: `Signed in as ${session.user}` }));
    } else if (session.sign_in) {
      box.append(
        el("a", {
          className: "sign-in",
          text: "Sign in to make changes",
          attrs: { href: "/login" },
        }),
      );
    }
    if (canChange()) {
      note.hidden = true;
    } else {
      note.textContent =
        !session.sign_in
          ? "Read-only: this console has no users to sign in as, so the controls are off."
          : "Read-only: sign in to change weights and states.";
      note.hidden = false;
    }
  }

  // -- the page, kept up to date ---------------------------------------------------

  /** Fetches everything once, renders it, and schedules the next refresh. */
  async function refresh() {
    const started = performance.now();
    try {
      let data;
      try {
        if (app.session === null) {
          app.session = await api("/api/session");
          renderSession();
        }
        data = await api("/api/upstreams");
      } catch (error) {
        offline(error);
        return;
      }
      online();
      // A change answered while this was in flight is newer than this.
      // (A bug in rendering is not a lost connection: it goes to the
      // browser's console, and the next refresh still comes.)
      if (started >= app.lastChangeAt) {
        render(data.upstreams);
        renderChanges(data.changes || []);
      }
    } finally {
      const elapsed = performance.now() - started;
      setTimeout(refresh, Math.max(REFRESH_MS - elapsed, 100));
    }
  }

  function online() {
    const main = document.getElementById("upstreams");
    main.setAttribute("aria-busy", "false");
    main.classList.remove("stale");
    app.refreshes += 1;
    main.dataset.refreshes = String(app.refreshes);
    document.getElementById("connection").hidden = true;
    setText(document.getElementById("updated"), `Updated ${clockTime(Date.now() / 1000)}.`);
  }

  function offline(error) {
    const banner = document.getElementById("connection");
    if (error instanceof ApiError && error.status === 401) {
      // A console not on loopback shows nothing without credentials.
      banner.replaceChildren(
        `${error.message} `,
        el("a", { text: "Sign in", attrs: { href: "/login" } }),
      );
    } else {
      setText(banner, "Connection lost, retrying…");
    }
    banner.hidden = false;
    document.getElementById("upstreams").classList.add("stale");
    // Gourmet may have restarted: its CSRF secret (and so our token) is new.
    // Until the session is loaded again the controls are off.
    app.session = null;
    for (const section of app.sections.values()) {
      for (const row of section.rows.values()) updateControls(row);
    }
  }

  /** Brings the page in line with the upstreams the API returned. */
  function render(upstreams) {
    const main = document.getElementById("upstreams");
    for (const note of main.querySelectorAll(".loading, .empty")) note.remove();
    const names = new Set();
    upstreams.forEach((upstream, index) => {
      names.add(upstream.name);
      let section = app.sections.get(upstream.name);
      if (!section) {
        section = buildSection(upstream);
        app.sections.set(upstream.name, section);
      }
      // Only move a node that is out of place: moving one drops focus.
      if (main.children[index] !== section.root) {
        main.insertBefore(section.root, main.children[index] || null);
      }
      updateSection(section, upstream);
    });
    for (const [name, section] of app.sections) {
      if (!names.has(name)) {
        section.root.remove();
        app.sections.delete(name);
      }
    }
    if (upstreams.length === 0) {
      main.append(el("p", { className: "empty", text: "No upstreams are configured." }));
    }
  }

  // -- one upstream -----------------------------------------------------------------

  const COLUMNS = [
    ["Server", "col-server"],
    ["State", "col-state"],
    ["Weight", "col-weight"],
    ["Active", "num"],
    ["Requests", "num"],
    ["Failures", "num"],
    ["Response time", "num col-latency"],
    ["Share", "col-share"],
    ["Actions", "col-actions"],
  ];

  function buildSection(upstream) {
    const section = { rows: new Map(), history: null };
    section.title = el("h2", { text: upstream.name });
    section.balancer = el("span", { className: "tag", attrs: { title: "Balancer" } });
    section.panic = el("span", {
      className: "state panic",
      text: "panic",
      attrs: {
        "data-state": "down",
        title: "Too few servers are healthy: requests go to every server in rotation, down or not.",
      },
    });
    section.panic.hidden = true;
    section.locations = el("ul", { className: "locations", attrs: { "aria-label": "Locations" } });
    section.totals = el("p", { className: "totals" });
    section.canvas = el("canvas", {
      attrs: {
        role: "img",
        "aria-label": `Requests and errors per second to ${upstream.name}`,
      },
    });
    section.peak = el("span", { className: "peak" });
    section.tbody = el("tbody");
    const head = el("tr", {}, COLUMNS.map(([label, className]) =>
      el("th", { className, text: label, attrs: { scope: "col" } })));
    section.root = el("section", { className: "upstream", attrs: { "data-upstream-section": upstream.name } }, [
      el("header", { className: "upstream-head" }, [
        el("div", { className: "upstream-title" }, [section.title, section.balancer, section.panic]),
        section.locations,
        section.totals,
      ]),
      el("figure", { className: "chart" }, [
        section.canvas,
        el("figcaption", { className: "legend" }, [
          el("span", { className: "key key-requests", text: "requests/s" }),
          el("span", { className: "key key-errors", text: "errors/s" }),
          section.peak,
        ]),
      ]),
      el("p", {
        className: "scroll-hint",
        text: "Swipe the table sideways for weights, traffic and actions.",
      }),
      // Wide tables scroll inside this box, never the whole page.
      el("div", {
        className: "table-scroll",
        attrs: { role: "region", tabindex: "0", "aria-label": `Servers of ${upstream.name}` },
      }, [el("table", { className: "servers" }, [el("thead", {}, [head]), section.tbody])]),
    ]);
    return section;
  }

  function updateSection(section, upstream) {
    setText(section.balancer, upstream.balancer);
    section.panic.hidden = !upstream.panic;
    const locations = upstream.locations.join("\n");
    if (section.locations.dataset.shown !== locations) {
      section.locations.dataset.shown = locations;
      section.locations.replaceChildren(...upstream.locations.map((pattern) =>
        el("li", {}, [el("code", { text: pattern })])));
    }
    const servers = upstream.servers;
    const perSecond = servers.reduce((sum, server) => sum + server.requests_per_second, 0);
    const errors = upstream.history.errors.slice(-60).reduce((sum, count) => sum + count, 0);
    const available = servers.filter((server) => server.state === "up").length;
    setText(
      section.totals,
      `${available} of ${servers.length} servers taking requests · ${rate(perSecond)} req/s · ` +
        `${numberFormat.format(errors)} ${errors === 1 ? "error" : "errors"} in the last 60 s`,
    );
    section.history = upstream.history;
    drawChart(section);

    const ids = new Set();
    servers.forEach((server, index) => {
      ids.add(server.id);
      let row = section.rows.get(server.id);
      if (!row) {
        row = buildRow(upstream.name, server);
        section.rows.set(server.id, row);
      }
      if (section.tbody.children[index] !== row.tr) {
        section.tbody.insertBefore(row.tr, section.tbody.children[index] || null);
      }
      updateRow(row, server);
    });
    for (const [id, row] of section.rows) {
      if (!ids.has(id)) {
        row.tr.remove();
        section.rows.delete(id);
      }
    }
  }

  // -- the chart ----------------------------------------------------------------------

  /** The smallest of 1, 2, 5, 10, 20, 50… that is at least `value`. */
  function niceCeiling(value) {
    let step = 1;
    for (;;) {
      for (const factor of [1, 2, 5]) {
        if (step * factor >= value) return step * factor;
      }
      step *= 10;
    }
  }

  /** Draws requests and errors per second over the history, oldest left. */
  function drawChart(section) {
    const canvas = section.canvas;
    const history = section.history;
    if (!history) return;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    // Draw at the screen's resolution, so lines stay sharp.
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);

    // The palette lives in the stylesheet.
    const style = getComputedStyle(document.documentElement);
    const colour = (name) => style.getPropertyValue(name).trim();
    const requests = history.requests;
    const errors = history.errors;
    const peak = Math.max(0, ...requests, ...errors);
    const top = niceCeiling(Math.max(peak, 1));
    setText(section.peak, `peak ${numberFormat.format(peak)}/s`);

    const left = 34;
    const right = width - 6;
    const upper = 8;
    const lower = height - 18;
    const x = (index) => left + ((right - left) * index) / Math.max(requests.length - 1, 1);
    const y = (value) => lower - ((lower - upper) * value) / top;

    // Grid lines and their labels: 0, half and the top of the scale.
    context.font = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
    context.textBaseline = "middle";
    context.textAlign = "right";
    context.lineWidth = 1;
    for (const value of [0, top / 2, top]) {
      const lineY = Math.round(y(value)) + 0.5;
      context.strokeStyle = colour("--chart-grid");
      context.beginPath();
      context.moveTo(left, lineY);
      context.lineTo(right, lineY);
      context.stroke();
      context.fillStyle = colour("--chart-label");
      context.fillText(numberFormat.format(value), left - 6, lineY);
    }
    context.textBaseline = "alphabetic";
    context.textAlign = "left";
    context.fillText(`${history.seconds} s ago`, left, height - 4);
    context.textAlign = "right";
    context.fillText("now", right, height - 4);

    plot(context, requests, x, y, lower, colour("--chart-requests"), colour("--chart-requests-fill"));
    plot(context, errors, x, y, lower, colour("--chart-errors"), colour("--chart-errors-fill"));
  }

  /** One series: a filled area under a line. */
  function plot(context, series, x, y, baseline, stroke, fill) {
    if (series.length === 0) return;
    context.beginPath();
    context.moveTo(x(0), baseline);
    series.forEach((value, index) => context.lineTo(x(index), y(value)));
    context.lineTo(x(series.length - 1), baseline);
    context.closePath();
    context.fillStyle = fill;
    context.fill();
    context.beginPath();
    series.forEach((value, index) => {
      if (index === 0) context.moveTo(x(index), y(value));
      else context.lineTo(x(index), y(value));
    });
    context.strokeStyle = stroke;
    context.lineWidth = 1.5;
    context.lineJoin = "round";
    context.stroke();
  }

  // -- one server's row ------------------------------------------------------------------

  const ACTIONS = [
    ["drain", "Drain", { state: "drain" }, "No new requests; those in flight finish."],
    ["disable", "Disable", { state: "disabled" }, "Take the server out of rotation."],
    ["enable", "Enable", { state: "up" }, "Put the server back in rotation."],
    ["reset", "Reset", { weight: null }, "Go back to the configured weight."],
  ];

  function buildRow(upstreamName, server) {
    const row = { upstream: upstreamName, id: server.id, server, busy: false, buttons: {} };
    row.address = el("span", { className: "address" });
    row.badge = el("span", { className: "state" });
    row.downTimes = el("div", { className: "down-times" });
    row.lastError = el("div", { className: "last-error" });
    row.weight = el("span", { className: "weight-now" });
    row.weightNote = el("div", { className: "weight-note" });
    row.active = el("td", { className: "num" });
    row.requests = el("td", { className: "num" });
    row.failures = el("td", { className: "num" });
    row.mean = el("div", { className: "latency-mean" });
    row.p95 = el("div", { className: "latency-p95" });
    row.sharePercent = el("span", { className: "share-percent" });
    row.shareFill = el("span", { className: "bar-fill" });
    row.rate = el("div", { className: "share-rate" });

    // The weight field and Set button are a form: Enter in the field submits.
    row.input = el("input", {
      attrs: {
        name: "weight",
        type: "number",
        min: "0",
        max: String(maxWeight()),
        step: "1",
        inputmode: "numeric",
        "aria-label": `New weight for ${server.address}`,
      },
    });
    row.buttons["set-weight"] = el("button", {
      className: "button primary",
      text: "Set",
      attrs: { type: "submit", "data-action": "set-weight" },
    });
    const form = el("form", { className: "weight-form", attrs: { novalidate: "" } }, [
      row.input,
      row.buttons["set-weight"],
    ]);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submitWeight(row);
    });
    // Typing marks the field as edited: refreshes leave it alone until the
    // change is sent, or Escape puts the current weight back.
    row.input.addEventListener("input", () => {
      row.input.dataset.edited = "true";
      row.input.classList.add("edited");
    });
    row.input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        clearEdited(row);
        updateRow(row, row.server);
      }
    });

    for (const [action, label, change, help] of ACTIONS) {
      const button = el("button", {
        className: `button ${action === "drain" || action === "disable" ? "caution" : ""}`.trim(),
        text: label,
        attrs: { type: "button", "data-action": action, title: help },
      });
      if (action === "reset") button.setAttribute("aria-label", "Reset weight");
      button.addEventListener("click", () => send(row, change));
      row.buttons[action] = button;
    }

    row.tr = el("tr", { attrs: { "data-upstream": upstreamName, "data-server": server.id } }, [
      el("td", { className: "col-server" }, [row.address]),
      el("td", { className: "col-state" }, [row.badge, row.downTimes, row.lastError]),
      el("td", { className: "col-weight" }, [row.weight, row.weightNote]),
      row.active,
      row.requests,
      row.failures,
      el("td", { className: "num col-latency" }, [row.mean, row.p95]),
      el("td", { className: "col-share" }, [
        el("div", { className: "share" }, [
          row.sharePercent,
          el("span", { className: "bar", attrs: { "aria-hidden": "true" } }, [row.shareFill]),
        ]),
        row.rate,
      ]),
      // Two groups: the weight (Set, Reset) and the state (Drain, Disable, Enable).
      el("td", { className: "col-actions" }, [
        el("div", { className: "actions" }, [
          el("div", { className: "action-group" }, [form, row.buttons.reset]),
          el("div", { className: "action-group" }, [
            row.buttons.drain,
            row.buttons.disable,
            row.buttons.enable,
          ]),
        ]),
      ]),
    ]);
    return row;
  }

  function clearEdited(row) {
    delete row.input.dataset.edited;
    row.input.classList.remove("edited");
  }

  /** The weight the server will take requests with when it is up. */
  function weightSetting(row, server) {
    if (server.admin_state === "up") return server.weight;
    if (!server.weight_overridden) return server.configured_weight;
    // While draining or disabled the API shows 0: keep the last one seen.
    return row.setting !== undefined ? row.setting : server.configured_weight;
  }

  function updateRow(row, server) {
    row.server = server;
    row.setting = weightSetting(row, server);
    setText(row.address, server.address);

    row.badge.dataset.state = server.state;
    setText(row.badge, server.state);
    const healthy = server.health === "up";
    let times = "";
    if (server.health === "down") {
      times = `since ${clockTime(server.down_since)}, until ${clockTime(server.down_until)}`;
    } else if (server.health === "trial") {
      times = `down since ${clockTime(server.down_since)}; on trial`;
    }
    if (!healthy && server.state !== server.health) times = `health ${server.health}: ${times}`;
    setText(row.downTimes, times);
    row.downTimes.hidden = healthy;
    const error = !healthy && server.last_error ? server.last_error : "";
    setText(row.lastError, error);
    row.lastError.hidden = error === "";
    row.lastError.title = error;

    setText(row.weight, numberFormat.format(server.weight));
    let note = "";
    if (server.weight_overridden) {
      note = `configured ${server.configured_weight} (override)`;
    } else if (server.weight !== server.configured_weight) {
      note = `configured ${server.configured_weight}`;
    }
    setText(row.weightNote, note);
    row.weightNote.hidden = note === "";
    row.tr.classList.toggle("overridden", server.weight_overridden);

    setText(row.active, numberFormat.format(server.active));
    setText(row.requests, numberFormat.format(server.requests));
    setText(row.failures, numberFormat.format(server.failures));
    row.failures.classList.toggle("has-failures", server.failures > 0);
    setText(row.mean, `mean ${milliseconds(server.latency_ms.mean)}`);
    setText(row.p95, `p95 ${milliseconds(server.latency_ms.p95)}`);

    const share = server.share;
    setText(row.sharePercent, share === null ? "–" : `${(share * 100).toFixed(1)}%`);
    // Setting a style property from script is allowed by the CSP.
    row.shareFill.style.width = `${share === null ? 0 : Math.min(share * 100, 100)}%`;
    setText(row.rate, `${rate(server.requests_per_second)} req/s`);

    // Never overwrite what the operator is typing.
    const input = row.input;
    if (document.activeElement !== input && !input.dataset.edited) {
      const value = String(row.setting);
      if (input.value !== value) input.value = value;
    }
    input.max = String(maxWeight());
    updateControls(row);
  }

  /** Enables the controls that make sense now, for an operator who may change. */
  function updateControls(row) {
    const server = row.server;
    const off = !canChange() || row.busy;
    const not = {
      "set-weight": false,
      drain: server.admin_state === "drain",
      disable: server.admin_state === "disabled",
      enable: server.admin_state === "up",
      reset: !server.weight_overridden,
    };
    for (const [action, button] of Object.entries(row.buttons)) {
      button.disabled = off || not[action];
    }
    // While the session is being reloaded the field stays as it is: turning
    // it off would take the focus from an operator typing in it.
    row.input.disabled = app.session !== null && !canChange();
    row.tr.classList.toggle("busy", row.busy);
  }

  // -- changes ------------------------------------------------------------------------------

  function submitWeight(row) {
    const text = row.input.value.trim();
    const weight = Number(text);
    if (!/^\d+$/.test(text) || weight > maxWeight()) {
      showStatus(
        `${label(row)}: the weight must be a whole number from 0 to ${maxWeight()}.`,
        "error",
      );
      row.input.focus();
      return;
    }
    send(row, { weight });
  }

  function label(row) {
    return `${row.upstream} / ${row.server.address}`;
  }

  /** Sends one change for a server, and says on the page how it went. */
  async function send(row, change) {
    if (row.busy) return;
    const before = row.server;
    row.busy = true;
    updateControls(row);
    let after = null;
    try {
      if (app.session === null) {
        // Being reloaded after a lost connection: load it now.
        app.session = await api("/api/session");
        renderSession();
      }
      if (canChange()) {
        after = await patchOrConfirm(row, change);
      } else {
        showStatus(`${label(row)}: sign in to make changes.`, "error");
      }
    } catch (error) {
      const why =
        error instanceof ApiError
          ? error.message
          : "Gourmet did not answer; the change may not have been made.";
      showStatus(`${label(row)}: ${why}`, "error");
    } finally {
      row.busy = false;
      updateControls(row);
    }
    if (after === null) return;
    app.lastChangeAt = performance.now();
    if ("weight" in change) clearEdited(row);
    updateRow(row, after);
    showStatus(`${label(row)}: ${describeChange(before, after, change)}`, "ok");
  }

  /**
   * PATCHes the server; when Gourmet answers that the change would leave
   * the upstream with no server taking requests (409), asks the operator,
   * naming the consequence, and sends it again with force only if they
   * say so.  Null when they do not.
   */
  async function patchOrConfirm(row, change) {
    try {
      return await patchServer(row, change);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 409)) throw error;
      const question = error.message.replace(/ Send "force".*$/, "");
      if (!window.confirm(`${label(row)}: ${question}\n\nDo it anyway?`)) {
        showStatus(`${label(row)}: not changed.`, "ok");
        return null;
      }
      return await patchServer(row, { ...change, force: true });
    }
  }

  /**
   * PATCHes the server with the session's CSRF token.  A 403 may only mean
   * that Gourmet restarted between two refreshes (a new process signs
   * tokens with a new secret): then the change is sent again, once, with
   * the new session's token.
   */
  async function patchServer(row, change) {
    const path =
      `/api/upstreams/${encodeURIComponent(row.upstream)}` +
      `/servers/${encodeURIComponent(row.id)}`;
    const attempt = () =>
      api(path, {
        method: "PATCH",
        headers: {
          "Content-Type": "application/json",
          "X-CSRF-Token": app.session.csrf_token,
        },
        body: JSON.stringify(change),
      });
    try {
      return await attempt();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 403)) throw error;
      const token = app.session.csrf_token;
      app.session = await api("/api/session");
      renderSession();
      if (!canChange() || app.session.csrf_token === token) throw error;
      return await attempt();
    }
  }

  /** What a change did, in words: "weight 1 → 3", "state up → drain". */
  function describeChange(before, after, change) {
    const parts = [];
    if ("weight" in change) {
      const configured = change.weight === null ? " (configured)" : "";
      if (after.admin_state !== "up") {
        const weight = change.weight === null ? after.configured_weight : change.weight;
        parts.push(`weight set to ${weight}${configured}, used once enabled`);
      } else {
        parts.push(`weight ${before.weight} → ${after.weight}${configured}`);
      }
    }
    if ("state" in change) {
      parts.push(
        before.admin_state === after.admin_state
          ? `already ${after.admin_state}`
          : `state ${before.admin_state} → ${after.admin_state}`,
      );
    }
    return parts.join(", ");
  }

  function showStatus(message, kind) {
    const status = document.getElementById("status");
    status.textContent = message;
    status.dataset.kind = kind;
    status.classList.remove("flash");
    // Restart the highlight animation for a repeated message.
    void status.offsetWidth;
    status.classList.add("flash");
  }

  // -- recent changes, and undoing the latest --------------------------------------------

  function renderChanges(changes) {
    const list = document.getElementById("changes-list");
    const shown = changes.map((change) =>
      `${clockTime(change.when)} ${change.who}: ${change.upstream} / ${change.server}: ` +
        change.description);
    if (list.dataset.shown !== shown.join("\n")) {
      list.dataset.shown = shown.join("\n");
      list.replaceChildren(...(shown.length
        ? shown.map((text) => el("li", { text }))
        : [el("li", { className: "empty", text: "No changes since Gourmet started." })]));
    }
    const undo = document.getElementById("undo");
    undo.disabled = !(canChange() && changes.length > 0) || app.undoing;
  }

  async function undoLatest() {
    const undo = document.getElementById("undo");
    app.undoing = true;
    undo.disabled = true;
    try {
      const answer = await api("/api/changes/undo", {
        method: "POST",
        headers: { "X-CSRF-Token": app.session.csrf_token },
      });
      const change = answer.undone;
      showStatus(`Undone: ${change.upstream} / ${change.server}: ${change.description}`, "ok");
    } catch (error) {
      const why =
        error instanceof ApiError ? error.message : "Gourmet did not answer; try again.";
      showStatus(`Undo: ${why}`, "error");
    } finally {
      app.undoing = false;
    }
  }

  // -- start ---------------------------------------------------------------------------------

  window.addEventListener("resize", () => {
    for (const section of app.sections.values()) drawChart(section);
  });
  document.getElementById("undo").addEventListener("click", undoLatest);
  renderSession();
  refresh();
})();
