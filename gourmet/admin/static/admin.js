/*
 * Gourmet's admin console.
 *
 * Shows this Gourmet, its listeners, and every upstream with its servers,
 * refreshed every second from the JSON API, and lets a signed-in operator
 * change a server's weight and state (drain, disable, enable).
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
    /** Listener name → its row's elements. */
    listeners: new Map(),
    /** Certificate file → its row's elements. */
    certificates: new Map(),
    /** TCP stream (its listen string) → its row's elements. */
    streams: new Map(),
    /** Cluster instance name → its row's elements. */
    instances: new Map(),
    /**
     * Gourmet's clock at its last answer, in Unix seconds: "up 5 min" is
     * measured on it, so a console read from a computer whose clock is off
     * still says how long.
     */
    serverNow: null,
    /** When a change last completed: a refresh started before that is stale. */
    lastChangeAt: 0,
    /** Successful refreshes so far (shown as data-refreshes, for tests). */
    refreshes: 0,
    /** Whether an undo is being sent. */
    undoing: false,
    /** Whether a reload is being asked for. */
    reloading: false,
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

  /** Sets an element's text, and hides it while that is empty. */
  function setLine(node, text) {
    setText(node, text);
    node.hidden = text === "";
  }

  /**
   * Brings `parent`'s children in line with `items`, one entry of
   * `entries` (a Map) per item's key: builds the new, updates every one,
   * removes the gone.  Only a node that is out of place is moved: moving
   * one drops its focus.
   *
   * @param how {key(item), build(item), update(entry, item), node(entry)}
   */
  function reconcile(parent, entries, items, how) {
    const keys = new Set();
    items.forEach((item, index) => {
      const key = how.key(item);
      keys.add(key);
      let entry = entries.get(key);
      if (!entry) {
        entry = how.build(item);
        entries.set(key, entry);
      }
      const node = how.node(entry);
      if (parent.children[index] !== node) {
        parent.insertBefore(node, parent.children[index] || null);
      }
      how.update(entry, item);
    });
    for (const [key, entry] of entries) {
      if (!keys.has(key)) {
        how.node(entry).remove();
        entries.delete(key);
      }
    }
  }

  /** Rebuilds `node`'s children, one `make(text)` a text, when they changed. */
  function showList(node, texts, make) {
    const shown = texts.join("\n");
    if (node.dataset.shown === shown) return;
    node.dataset.shown = shown;
    node.replaceChildren(...texts.map(make));
  }

  function count(value) {
    return numberFormat.format(value);
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

  /** Unix seconds as local YYYY-MM-DD HH:MM:SS. */
  function dateTime(seconds) {
    const date = new Date(seconds * 1000);
    const day = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
    return `${day} ${clockTime(seconds)}`;
  }

  /** A duration such as "42 s", "5 min", "3 h 02 min" or "2 d 4 h". */
  function duration(seconds) {
    const whole = Math.max(0, Math.floor(seconds));
    if (whole < 60) return `${whole} s`;
    const minutes = Math.floor(whole / 60);
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    if (hours < 24) return `${hours} h ${pad(minutes % 60)} min`;
    return `${Math.floor(hours / 24)} d ${hours % 24} h`;
  }

  /** "16:02:11 (5 min ago)", the time measured on Gourmet's clock. */
  function since(seconds) {
    if (seconds === null || seconds === undefined) return "?";
    const now = app.serverNow === null ? Date.now() / 1000 : app.serverNow;
    return `${clockTime(seconds)} (${duration(now - seconds)} ago)`;
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

  const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

  /** A number of bytes such as "812 B" or "56.8 KiB". */
  function byteSize(value) {
    let size = value;
    let unit = 0;
    while (size >= 1024 && unit < BYTE_UNITS.length - 1) {
      size /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${value} B` : `${size.toFixed(size < 100 ? 1 : 0)} ${BYTE_UNITS[unit]}`;
  }

  /**
   * Counts by HTTP status as "502 ×1 · 504 ×3", in status order; without
   * `zeros`, only those that happened.
   */
  function statusCounts(counts, zeros) {
    return Object.keys(counts || {})
      .sort()
      .filter((status) => zeros || counts[status] > 0)
      .map((status) => `${status} ×${count(counts[status])}`)
      .join(" · ");
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

  // -- an address with a user name and password in it ------------------------------

  /**
   * The page's address without the user name and password, or null when it
   * has none.  Browsers refuse every fetch() from a page opened as
   * http://user:pass@host/, and Chromium leaves them out of `location`:
   * the document's URL still has them.
   */
  function addressWithoutCredentials() {
    const address = new URL(document.URL);
    if (address.username === "" && address.password === "") return null;
    address.username = "";
    address.password = "";
    return address.href;
  }

  /** Whether fetch() refused because the page's address holds credentials. */
  function refusedForCredentials(error) {
    return error instanceof TypeError && /credentials/i.test(error.message);
  }

  /**
   * Says how to sign in instead.  The links are whole addresses: relative
   * ones would keep the user name and password of this page's address.
   */
  function adviseSigningIn(clean) {
    const banner = document.getElementById("connection");
    banner.replaceChildren(
      "This page was opened with a user name and password in its address " +
        "(user:password@), which browsers do not let it use. Open ",
      el("a", { className: "clean-address", text: clean, attrs: { href: clean } }),
      " instead, then ",
      el("a", { text: "Sign in", attrs: { href: new URL("/login", clean).href } }),
      ": the browser asks for the user name and password.",
    );
    banner.hidden = false;
    document.getElementById("upstreams").setAttribute("aria-busy", "false");
    const loading = document.getElementById("loading");
    if (loading) setText(loading, "Nothing to show from this address.");
  }

  // -- the page, kept up to date ---------------------------------------------------

  /** Fetches everything once, renders it, and schedules the next refresh. */
  async function refresh() {
    const started = performance.now();
    let data = null;
    try {
      data = await fetchAll();
    } catch (error) {
      if (refusedForCredentials(error)) {
        // Every request from this page would be refused the same way.
        adviseSigningIn(addressWithoutCredentials() || location.href);
        return;
      }
      offline(error);
    }
    // Scheduled first: a bug in rendering is not a lost connection (it goes
    // to the browser's console), and the next refresh still comes.
    const elapsed = performance.now() - started;
    setTimeout(refresh, Math.max(REFRESH_MS - elapsed, 100));
    if (data === null) return;
    online();
    // A change answered while this was in flight is newer than this.
    if (started >= app.lastChangeAt) renderAll(data);
  }

  async function fetchAll() {
    if (app.session === null) {
      app.session = await api("/api/session");
      renderSession();
    }
    return api("/api/upstreams");
  }

  function renderAll(data) {
    const instance = data.instance;
    app.serverNow = instance ? instance.started + instance.uptime : null;
    renderOverview(instance, data.listeners || []);
    renderCertificates(data.certificates || []);
    renderStreams(data.streams || []);
    renderCluster(data.cluster || null);
    render(data.upstreams);
    renderChanges(data.changes || []);
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

  // -- this Gourmet, and its listeners ----------------------------------------------

  /** The facts shown about this Gourmet: label, data-fact, and the text. */
  const FACTS = [
    ["Version", "version", (instance) => instance.version],
    ["Started", "started", (instance) => dateTime(instance.started)],
    ["Up for", "uptime", (instance) => duration(instance.uptime)],
    ["Process id", "pid", (instance) => String(instance.pid)],
    ["Python", "python", (instance) => instance.python],
    ["Twisted", "twisted", (instance) => instance.twisted],
    ["Configuration", "config", (instance) => instance.config_file || "none (the defaults)"],
  ];

  function renderOverview(instance, listeners) {
    document.getElementById("overview").hidden = !instance;
    if (!instance) return;
    renderInstance(instance);
    renderRows("listeners-body", app.listeners, listeners, LISTENER_TABLE);
  }

  /**
   * Brings a table's rows in line with ``items``: one row per item, found
   * again by ``table.key``; its first cell a row heading, then one cell per
   * ``table.cells`` entry ([field, class]), filled in by ``table.update``.
   */
  function renderRows(bodyId, rows, items, table) {
    reconcile(document.getElementById(bodyId), rows, items, {
      key: table.key,
      build: (item) => buildTableRow(table, item),
      update: table.update,
      node: (row) => row.tr,
    });
  }

  function buildTableRow(table, item) {
    const row = {};
    const cells = table.cells.map(([field, className], index) => {
      const tag = index === 0 ? "th" : "td";
      const attrs = index === 0 ? { scope: "row" } : {};
      row[field] = el(tag, { className, attrs });
      return row[field];
    });
    row.tr = el("tr", { attrs: { [`data-${table.name}`]: table.key(item) } }, cells);
    return row;
  }

  /** A table that is shown only while it has rows, in its own panel. */
  function renderPanel(name, rows, items, table) {
    document.getElementById(`${name}-panel`).hidden = items.length === 0;
    renderRows(`${name}-body`, rows, items, table);
  }

  function renderInstance(instance) {
    const list = document.getElementById("instance");
    if (list.children.length === 0) {
      for (const [label, name] of FACTS) {
        list.append(el("div", { className: `fact fact-${name}` }, [
          el("dt", { text: label }),
          el("dd", { attrs: { "data-fact": name } }),
        ]));
      }
    }
    for (const [, name, show] of FACTS) {
      setText(list.querySelector(`[data-fact="${name}"]`), show(instance));
    }
  }

  function updateListenerRow(row, listener) {
    setText(row.name, listener.name);
    showList(row.addresses, listener.addresses, (address) => el("div", { text: address }));
    const open = listener.connections;
    const limit = listener.max_connections;
    // max_connections 0 is no limit at all.
    const http2 = listener.http2_connections ? ` (${count(listener.http2_connections)} HTTP/2)` : "";
    setText(row.connections, (limit > 0 ? `${count(open)} of ${count(limit)}` : `${count(open)}, no limit`) + http2);
    row.connections.classList.toggle("near-limit", limit > 0 && open >= 0.9 * limit);
    setText(row.refusals, statusCounts(listener.refusals, false) || "none");
  }

  // -- certificates ------------------------------------------------------------------

  /** Days left under which a certificate's expiry is shown as a warning. */
  const EXPIRY_WARNING_DAYS = 14;

  function renderCertificates(certificates) {
    renderPanel("certificates", app.certificates, certificates, CERTIFICATE_TABLE);
  }

  function updateCertificateRow(row, certificate) {
    setText(row.file, certificate.default ? `${certificate.file} (default)` : certificate.file);
    showList(row.names, certificate.names, (name) => el("div", { text: name }));
    const now = app.serverNow === null ? Date.now() / 1000 : app.serverNow;
    const left = certificate.not_after - now;
    const when = dateTime(certificate.not_after);
    setText(row.expires, left > 0 ? `${when} (in ${duration(left)})` : `${when} (expired)`);
    row.expires.classList.toggle("near-limit", left < EXPIRY_WARNING_DAYS * 86400);
  }

  // -- TCP streams -------------------------------------------------------------------

  function renderStreams(streams) {
    renderPanel("streams", app.streams, streams, STREAM_TABLE);
  }

  function updateStreamRow(row, stream) {
    setText(row.address, stream.address);
    row.address.title = stream.listen;
    setText(row.upstream, stream.upstream);
    const c = stream.connections;
    setText(row.connections, `${count(c.active)} open, ${count(c.total)} in all, ${count(c.failed)} failed`);
    row.connections.classList.toggle("near-limit", c.failed > 0);
    setText(row.bytes, `${byteSize(stream.bytes.received)} in, ${byteSize(stream.bytes.sent)} out`);
  }

  // -- the cluster: etcd, and the other instances ----------------------------------------

  function renderCluster(cluster) {
    document.getElementById("cluster-panel").hidden = cluster === null;
    if (cluster === null) return;
    const status = document.getElementById("cluster-status");
    let text = `${cluster.name} · etcd ${cluster.etcd.join(", ")} · `;
    if (cluster.connected) {
      text += cluster.since === null ? "connected" : `connected since ${since(cluster.since)}`;
    } else if (cluster.last_error === null) {
      text += "connecting…";
    } else {
      const why = cluster.last_error.replace(/\.+$/, "");
      text += `unreachable since ${since(cluster.since)}: ${why}. ` +
        "Serving with the last state known; changes made here apply here and are " +
        "written once etcd is back";
    }
    if (cluster.pending > 0) text += ` · ${count(cluster.pending)} changes waiting for etcd`;
    setText(status, text);
    status.classList.toggle("banner-error", !cluster.connected && cluster.last_error !== null);
    renderRows("cluster-body", app.instances, cluster.instances, INSTANCE_TABLE);
  }

  function updateInstanceRow(row, instance) {
    setText(row.name, instance.self ? `${instance.name} (this one)` : instance.name);
    setText(row.admin, instance.admin || "no console");
    setText(row.started, `${dateTime(instance.started)}, pid ${instance.pid}, ${instance.version}`);
    setText(row.seen, since(instance.seen));
  }

  // The tables' rows; declared after their update functions, which they name.
  const LISTENER_TABLE = {
    name: "listener",
    key: (listener) => listener.name,
    cells: [["name", ""], ["addresses", "addresses"], ["connections", "num connections"],
      ["refusals", "refusals"]],
    update: updateListenerRow,
  };
  const CERTIFICATE_TABLE = {
    name: "certificate",
    key: (certificate) => certificate.file,
    cells: [["file", "file"], ["names", "names"], ["expires", "expires"]],
    update: updateCertificateRow,
  };
  const STREAM_TABLE = {
    name: "stream",
    key: (stream) => stream.listen,
    cells: [["address", "addresses"], ["upstream", "upstream"],
      ["connections", "num connections"], ["bytes", "num bytes"]],
    update: updateStreamRow,
  };

  const INSTANCE_TABLE = {
    name: "instance",
    key: (instance) => instance.name,
    cells: [["name", ""], ["admin", "addresses"], ["started", "started"], ["seen", "seen"]],
    update: updateInstanceRow,
  };

  /** Brings the page in line with the upstreams the API returned. */
  function render(upstreams) {
    const main = document.getElementById("upstreams");
    for (const note of main.querySelectorAll(".loading, .empty")) note.remove();
    reconcile(main, app.sections, upstreams, {
      key: (upstream) => upstream.name,
      build: buildSection,
      update: updateSection,
      node: (section) => section.root,
    });
    if (upstreams.length === 0) {
      main.append(el("p", { className: "empty", text: "No upstreams are configured." }));
    }
  }

  // -- one upstream -----------------------------------------------------------------

  /** The servers' columns: heading, class, and what it means (a tooltip). */
  const COLUMNS = [
    ["Server", "col-server"],
    ["State", "col-state"],
    ["Rate", "col-rate",
      "Requests per second now (last 5 s); the last 60 s: average, busiest second, share"],
    ["Responses", "col-responses",
      "Requests since start, answers by status class (failed: no usable answer), " +
        "and Gourmet's own 502/504 after this server failed"],
    ["Errors", "col-errors",
      "Failures since start: seen by clients, or hidden by a retry; " +
        "retried: requests that failed here and went to another server"],
    ["Response time", "num col-latency", "Time to the response head, last 256 requests"],
    ["Connections", "col-connections",
      "Requests in flight; idle and busy connections in the pool; " +
        "body bytes sent (requests) and received (responses)"],
    ["Weight and actions", "col-actions"],
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
    section.provider = el("p", { className: "provider" });
    section.provider.hidden = true;
    section.locations = el("ul", { className: "locations", attrs: { "aria-label": "Locations" } });
    section.available = el("span", { className: "available" });
    section.errors = el("span", { className: "errors-summary" });
    section.tbody = el("tbody");
    section.root = el("section", { className: "upstream", attrs: { "data-upstream-section": upstream.name } }, [
      el("header", { className: "upstream-head" }, [
        el("div", { className: "upstream-title" }, [section.title, section.balancer, section.panic]),
        section.provider,
        section.locations,
        el("p", { className: "totals" }, [section.available, " · ", section.errors]),
      ]),
      el("div", { className: "upstream-body" }, [buildSummary(section), buildChart(section, upstream)]),
      el("p", {
        className: "scroll-hint",
        text: "Swipe the table sideways for errors, connections, weights and actions.",
      }),
      // Wide tables scroll inside this box, never the whole page.
      el("div", {
        className: "table-scroll",
        attrs: { role: "region", tabindex: "0", "aria-label": `Servers of ${upstream.name}` },
      }, [el("table", { className: "servers" }, [el("thead", {}, [headRow()]), section.tbody])]),
    ]);
    return section;
  }

  function headRow() {
    return el("tr", {}, COLUMNS.map(([label, className, help]) =>
      el("th", { className, text: label, attrs: help ? { scope: "col", title: help } : { scope: "col" } })));
  }

  /** The upstream's rates and Gourmet's own answers for it, as figures. */
  function buildSummary(section) {
    section.rateNow = el("dd", { className: "rate-now" });
    section.rateMinute = el("dd", { className: "rate-minute" });
    section.ratePeak = el("dd", { className: "rate-peak" });
    section.gourmetStatuses = el("dd", { className: "gourmet-statuses" });
    const figure = (label, value, className) =>
      el("div", { className: `figure ${className || ""}`.trim() }, [el("dt", { text: label }), value]);
    return el("dl", { className: "summary" }, [
      figure("Now", section.rateNow),
      figure("Avg 60 s", section.rateMinute),
      figure("Peak 60 s", section.ratePeak),
      figure("Gourmet's own answers", section.gourmetStatuses, "wide"),
    ]);
  }

  function buildChart(section, upstream) {
    section.canvas = el("canvas", {
      attrs: {
        role: "img",
        "aria-label": `Requests and errors per second to ${upstream.name}`,
      },
    });
    return el("figure", { className: "chart" }, [
      section.canvas,
      el("figcaption", { className: "legend" }, [
        el("span", { className: "key key-requests", text: "requests/s" }),
        el("span", { className: "key key-errors", text: "errors/s" }),
        el("span", { className: "chart-span", text: "last 2 minutes" }),
      ]),
    ]);
  }

  function updateSection(section, upstream) {
    setText(section.balancer, upstream.hash_key ? `${upstream.balancer} ${upstream.hash_key}` : upstream.balancer);
    section.panic.hidden = !upstream.panic;
    updateProvider(section.provider, upstream.provider);
    showList(section.locations, upstream.locations, (pattern) =>
      el("li", {}, [el("code", { text: pattern })]));
    updateSummary(section, upstream);
    section.history = upstream.history;
    drawChart(section);
    reconcile(section.tbody, section.rows, upstream.servers, {
      key: (server) => server.id,
      build: (server) => buildRow(upstream.name, server),
      update: updateRow,
      node: (row) => row.tr,
    });
  }

  /**
   * Where the servers come from, when a provider finds them: its latest
   * set, or while it fails, since when and why (its servers stay).
   */
  function updateProvider(node, provider) {
    if (!provider || provider.name === "static") {
      setLine(node, "");
      return;
    }
    const failing = provider.last_error !== null;
    let text = `servers from ${provider.name} · `;
    text += provider.last_update === null ? "none found yet" : `found ${since(provider.last_update)}`;
    if (failing) text += ` · failing since ${since(provider.error_since)}: ${provider.last_error}`;
    setLine(node, text);
    node.classList.toggle("is-down", failing);
  }

  function updateSummary(section, upstream) {
    const servers = upstream.servers;
    const available = servers.filter((server) => server.state === "up").length;
    setText(section.available, `${available} of ${servers.length} servers taking requests`);
    setText(section.errors, failuresSentence(upstream.errors));
    section.errors.classList.toggle("reached-clients", upstream.errors.seen > 0);
    setText(section.rateNow, `${rate(upstream.rate.current)}/s`);
    setText(section.rateMinute, `${rate(upstream.rate.minute)}/s`);
    setText(section.ratePeak, `${count(upstream.rate.peak)}/s`);
    const own = upstream.gourmet_statuses;
    setText(section.gourmetStatuses, statusCounts(own, true) || "none");
    section.gourmetStatuses.classList.toggle("some", statusCounts(own, false) !== "");
  }

  /**
   * "3 failures in the last 60 s, 0 reached clients, 3 hidden by retries":
   * a failure a retry hid is not an error a client saw, and the operator
   * needs to tell them apart.
   */
  function failuresSentence(errors) {
    if (errors.last_minute === 0) return "no failures in the last 60 s";
    const noun = errors.last_minute === 1 ? "failure" : "failures";
    return (
      `${count(errors.last_minute)} ${noun} in the last 60 s, ` +
      `${count(errors.seen)} reached clients, ${count(errors.hidden)} hidden by retries`
    );
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
      context.fillText(count(value), left - 6, lineY);
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

  /** The status classes in the order shown; "failed" is no usable answer. */
  const STATUS_CLASSES = ["2xx", "3xx", "4xx", "5xx", "failed"];

  /**
   * A server's row: each cell holds a figure and a line or two under it,
   * so that nine columns show rate, answers and errors without a click.
   */
  function buildRow(upstreamName, server) {
    const row = { upstream: upstreamName, id: server.id, server, busy: false, buttons: {} };
    row.tr = el("tr", { attrs: { "data-upstream": upstreamName, "data-server": server.id } }, [
      cell(row, "col-server", { address: "address", found: "found" }),
      cell(row, "col-state", {
        badge: "state",
        since: "since",
        lastError: "last-error",
        check: "check",
        slowStart: "slow-start",
      }),
      buildRateCell(row),
      buildResponsesCell(row),
      buildErrorsCell(row),
      cell(row, "num col-latency", { mean: "latency-mean", p95: "latency-p95", ewma: "latency-ewma" }),
      cell(row, "col-connections", { active: "active", pool: "pool", sent: "bytes", received: "bytes" }),
      buildActionsCell(row, server),
    ]);
    return row;
  }

  /** A new element, kept as `holder[name]` to be updated later. */
  function keep(holder, name, tag, className) {
    holder[name] = el(tag, { className });
    return holder[name];
  }

  /** A cell of lines, each kept as `row[name]` with the class given. */
  function cell(row, className, lines) {
    return el("td", { className }, Object.entries(lines).map(([name, lineClass]) =>
      keep(row, name, "div", lineClass)));
  }

  function buildRateCell(row) {
    return el("td", { className: "col-rate" }, [
      keep(row, "rateNow", "div", "rate-now"),
      el("div", { className: "rate-more" }, [
        "avg ",
        keep(row, "rateMinute", "span", "rate-minute"),
        " · peak ",
        keep(row, "ratePeak", "span", "rate-peak"),
      ]),
      el("div", { className: "share" }, [
        keep(row, "sharePercent", "span", "share-percent"),
        el("span", { className: "bar", attrs: { "aria-hidden": "true" } }, [
          keep(row, "shareFill", "span", "bar-fill"),
        ]),
      ]),
      keep(row, "hashShare", "div", "hash-share"),
    ]);
  }

  function buildResponsesCell(row) {
    row.classes = {};
    const chips = STATUS_CLASSES.map((name) =>
      el("span", { className: "status-class", attrs: { "data-class": name } }, [
        `${name} `,
        keep(row.classes, name, "span", "status-count"),
      ]));
    const own = keep(row, "gourmetStatuses", "div", "gourmet-statuses");
    own.title = "Gourmet's own answers after this server failed";
    return el("td", { className: "col-responses" }, [
      keep(row, "requests", "div", "requests"),
      el("div", { className: "status-classes" }, chips),
      own,
    ]);
  }

  function buildErrorsCell(row) {
    return el("td", { className: "col-errors" }, [
      keep(row, "failures", "div", "failures"),
      el("div", { className: "errors-split" }, [
        keep(row, "seen", "span", "errors-seen"),
        " seen by clients",
      ]),
      el("div", { className: "errors-split" }, [
        keep(row, "hidden", "span", "errors-hidden"),
        " hidden by retries",
      ]),
      keep(row, "retries", "div", "retries"),
    ]);
  }

  /**
   * The weight now, then two groups of controls: the weight (Set, Reset)
   * and the state (Drain, Disable, Enable).
   */
  function buildActionsCell(row, server) {
    row.weight = el("span", { className: "weight-now" });
    row.weightNote = el("span", { className: "weight-note" });
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
    return el("td", { className: "col-actions" }, [
      el("div", { className: "weight" }, ["weight ", row.weight, " ", row.weightNote]),
      el("div", { className: "actions" }, [
        el("div", { className: "action-group" }, [buildWeightForm(row, server), row.buttons.reset]),
        el("div", { className: "action-group" }, [
          row.buttons.drain,
          row.buttons.disable,
          row.buttons.enable,
        ]),
      ]),
    ]);
  }

  /** The weight field and Set button are a form: Enter in the field submits. */
  function buildWeightForm(row, server) {
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
    return form;
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
    // What a provider said of it: a pod, a node, a zone.
    const found = server.found ? Object.entries(server.found) : [];
    setLine(row.found, found.map(([name, value]) => `${name} ${value}`).join(" · "));
    updateState(row, server);
    updateRate(row, server);
    updateResponses(row, server);
    updateErrors(row, server);
    setText(row.mean, `mean ${milliseconds(server.latency_ms.mean)}`);
    setText(row.p95, `p95 ${milliseconds(server.latency_ms.p95)}`);
    setText(row.ewma, `ewma ${milliseconds(server.latency_ms.ewma)}`);
    updateConnections(row, server);
    updateWeight(row, server);
    updateControls(row);
  }

  function updateState(row, server) {
    row.badge.dataset.state = server.state;
    setText(row.badge, server.state);
    const healthy = server.health === "up";
    // "up" is the badge's word only when the operator has it in rotation.
    let times = `${server.state === "up" ? "up" : "healthy"} since ${since(server.up_since)}`;
    if (server.health === "down") {
      times = `down since ${since(server.down_since)}, until ${clockTime(server.down_until)}`;
    } else if (server.health === "trial") {
      times = `down since ${since(server.down_since)}; on trial`;
    }
    if (!healthy && server.state !== server.health) times = `health ${server.health}: ${times}`;
    setText(row.since, times);
    row.since.classList.toggle("is-down", !healthy);
    const error = !healthy && server.last_error ? server.last_error : "";
    setLine(row.lastError, error);
    row.lastError.title = error;
    updateChecks(row, server);
  }

  /**
   * Active health checks, in HAProxy's words ("check L7STS 503 in 2 ms"),
   * and what takes the server out; then its slow start, while it ramps.
   */
  function updateChecks(row, server) {
    const checks = server.checks;
    let text = "";
    if (checks) {
      text = `check ${checks.last === null ? "pending" : checks.last}`;
      if (!checks.up) text += ` · out by checks since ${since(checks.down_since)}`;
      text += ` · ${count(checks.checks)} checks, ${count(checks.downs)} downs`;
    }
    setLine(row.check, text);
    row.check.classList.toggle("is-down", Boolean(checks) && !checks.up);
    row.check.title = server.down_by.length ? `out by ${server.down_by.join(" and ")} health` : "";
    const ramp = server.slow_start;
    setLine(row.slowStart, ramp === null ? "" : `slow start: ${Math.round(ramp * 100)}% of its weight`);
  }

  function updateRate(row, server) {
    setText(row.rateNow, `${rate(server.rate.current)}/s`);
    setText(row.rateMinute, rate(server.rate.minute));
    setText(row.ratePeak, count(server.rate.peak));
    const share = server.share;
    setText(row.sharePercent, share === null ? "–" : `${(share * 100).toFixed(1)}%`);
    // Setting a style property from script is allowed by the CSP.
    row.shareFill.style.width = `${share === null ? 0 : Math.min(share * 100, 100)}%`;
    // A keyed balancer's view: the share of keys the ring gives it now.
    const keys = server.hash_share;
    row.hashShare.hidden = keys === null || keys === undefined;
    setText(row.hashShare, row.hashShare.hidden ? "" : `${(keys * 100).toFixed(1)}% of keys`);
  }

  function updateResponses(row, server) {
    setText(row.requests, `${count(server.requests)} requests`);
    for (const name of STATUS_CLASSES) {
      const seen = server.statuses[name] || 0;
      setText(row.classes[name], count(seen));
      // A class that never happened takes no room; 2xx always shows.
      row.classes[name].parentElement.hidden = seen === 0 && name !== "2xx";
    }
    const own = statusCounts(server.gourmet_statuses, false);
    setLine(row.gourmetStatuses, own && `Gourmet answered ${own}`);
  }

  function updateErrors(row, server) {
    setText(row.failures, `${count(server.failures)} failures`);
    row.failures.classList.toggle("has-failures", server.failures > 0);
    setText(row.seen, count(server.errors.seen));
    row.seen.classList.toggle("has-failures", server.errors.seen > 0);
    setText(row.hidden, count(server.errors.hidden));
    setText(row.retries, `${count(server.retries)} retried elsewhere`);
  }

  function updateConnections(row, server) {
    setText(row.active, `${count(server.active)} in flight`);
    setText(row.pool, `pool ${count(server.pool.idle)} idle · ${count(server.pool.busy)} busy`);
    // Bodies only, as counted: a GET sends none.
    setText(row.sent, `${byteSize(server.bytes.sent)} body sent`);
    setText(row.received, `${byteSize(server.bytes.received)} body received`);
  }

  function updateWeight(row, server) {
    setText(row.weight, count(server.weight));
    let note = "";
    if (server.weight_overridden) {
      note = `configured ${server.configured_weight} (override)`;
    } else if (server.weight !== server.configured_weight) {
      note = `configured ${server.configured_weight}`;
    }
    setLine(row.weightNote, note);
    row.tr.classList.toggle("overridden", server.weight_overridden);
    // Never overwrite what the operator is typing.
    const input = row.input;
    if (document.activeElement !== input && !input.dataset.edited) {
      const value = String(row.setting);
      if (input.value !== value) input.value = value;
    }
    input.max = String(maxWeight());
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
      change.kind === "reload"
        ? `${clockTime(change.when)} ${change.who}: ${change.description}`
        : `${clockTime(change.when)} ${change.who}${change.instance ? ` on ${change.instance}` : ""}: ` +
          `${change.upstream} / ${change.server}: ${change.description}`);
    const none = shown.length === 0;
    showList(list, none ? ["No changes since Gourmet started."] : shown, (text) =>
      el("li", { className: none ? "empty" : "", text }));
    const undo = document.getElementById("undo");
    // A reload is undone by changing the file, not from here.
    const undoable = changes.length > 0 && changes[0].kind !== "reload";
    undo.disabled = !(canChange() && undoable) || app.undoing;
    document.getElementById("reload").disabled = !canChange() || app.reloading;
  }

  /**
   * Posts to one of the API's actions, its button off meanwhile, and says
   * what came of it: `done(answer)`, or why it was `refused`.
   */
  async function act(button, busy, path, done, refused) {
    app[busy] = true;
    button.disabled = true;
    try {
      const answer = await api(path, {
        method: "POST",
        headers: { "X-CSRF-Token": app.session.csrf_token },
      });
      showStatus(done(answer), "ok");
    } catch (error) {
      const why =
        error instanceof ApiError ? error.message : "Gourmet did not answer; try again.";
      showStatus(`${refused}: ${why}`, "error");
    } finally {
      app[busy] = false;
    }
  }

  /** Asks Gourmet to read its configuration file again. */
  function reloadConfiguration() {
    // A file that is not valid: Gourmet's one line, and nothing changed.
    return act(
      document.getElementById("reload"),
      "reloading",
      "/api/reload",
      (answer) => `Reloaded: ${answer.reloaded.description}`,
      "Reload refused, nothing changed",
    );
  }

  function undoLatest() {
    return act(
      document.getElementById("undo"),
      "undoing",
      "/api/changes/undo",
      ({ undone }) => `Undone: ${undone.upstream} / ${undone.server}: ${undone.description}`,
      "Undo",
    );
  }

  // -- start ---------------------------------------------------------------------------------

  window.addEventListener("resize", () => {
    for (const section of app.sections.values()) drawChart(section);
  });
  document.getElementById("undo").addEventListener("click", undoLatest);
  document.getElementById("reload").addEventListener("click", reloadConfiguration);
  renderSession();
  const clean = addressWithoutCredentials();
  // Every request from a page opened with credentials in its address fails.
  if (clean === null) refresh();
  else adviseSigningIn(clean);
})();
