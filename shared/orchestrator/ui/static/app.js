// The Orchestrator web UI: the run list and a run's page, kept up to date by polling the JSON
// endpoints of orchestrator.ui.server. Every value from a run is put in the page with
// textContent or an attribute, never parsed as HTML; the graph's SVG (drawn by the server from
// the pipeline file) is parsed as SVG and stripped of scripts and event attributes.
"use strict";

const POLL_MS = 1000;
const PAGE = 50;
const token = document.querySelector('meta[name="orchestrator-token"]').content;
const $ = (id) => document.getElementById(id);

let timer = null;
let view = { name: null };

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

async function getJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function problem(message) {
  $("problem").hidden = !message;
  $("problem").textContent = message || "";
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  if (value < 60) return value.toFixed(value < 10 ? 2 : 1) + " s";
  const minutes = Math.floor(value / 60);
  return minutes + " min " + Math.round(value - minutes * 60) + " s";
}

function shortTime(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "") : "";
}

function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

// ---- routing ---------------------------------------------------------------------------------

function route() {
  clearTimeout(timer);
  const match = location.hash.match(/^#\/runs\/(.+)$/);
  $("list-view").hidden = Boolean(match);
  $("run-view").hidden = !match;
  problem("");
  if (match) openRun(decodeURIComponent(match[1]));
  else openList();
}

// ---- the run list ----------------------------------------------------------------------------

const list = { offset: 0 };

function openList() {
  view = { name: "list" };
  $("where").textContent = "runs";
  refreshList();
}

async function refreshList() {
  if (view.name !== "list") return;
  const query = new URLSearchParams({ limit: PAGE, offset: list.offset });
  if ($("filter-status").value) query.set("status", $("filter-status").value);
  if ($("filter-pipeline").value.trim()) query.set("pipeline", $("filter-pipeline").value.trim());
  try {
    const body = await getJson("/api/runs?" + query);
    if (view.name !== "list") return;
    problem("");
    showRuns(body.runs);
  } catch (error) {
    problem("Cannot read the runs: " + error.message);
  }
  timer = setTimeout(refreshList, 2 * POLL_MS);
}

function showRuns(runs) {
  const rows = runs.map((run) =>
    el(
      "tr",
      { "data-run": run.run_id, "data-status": run.status },
      el("td", {}, el("a", { href: "#/runs/" + encodeURIComponent(run.run_id), text: run.run_id })),
      el("td", {}, el("span", { class: "badge status-" + run.status, text: run.status })),
      el("td", { text: run.pipeline }),
      el("td", { text: shortTime(run.started_at) }),
      el("td", { text: seconds(run.duration) }),
      el("td", { text: run.engine || "" }),
      el("td", { text: run.user || "" }),
    ),
  );
  $("runs").tBodies[0].replaceChildren(...rows);
  $("runs-empty").hidden = runs.length > 0;
  $("newer").disabled = list.offset === 0;
  $("older").disabled = runs.length < PAGE;
  const known = new Set([...$("pipelines").options].map((option) => option.value));
  for (const run of runs) {
    if (!known.has(run.pipeline)) {
      known.add(run.pipeline);
      $("pipelines").append(el("option", { value: run.pipeline }));
    }
  }
}

function listFiltersChanged() {
  list.offset = 0;
  clearTimeout(timer);
  refreshList();
}

// ---- a run's page ----------------------------------------------------------------------------

function openRun(runId) {
  view = { name: "run", runId, document: null, text: null, selected: null, open: new Set(), graphFor: null };
  $("where").textContent = "run " + runId;
  $("graph").replaceChildren(el("p", { id: "graph-note", class: "note", text: "loading the graph…" }));
  $("timeline").replaceChildren();
  $("details").hidden = true;
  $("run-view").classList.remove("with-details");
  $("resume-message").hidden = true;
  refreshRun(runId);
}

async function refreshRun(runId) {
  if (view.name !== "run" || view.runId !== runId) return;
  try {
    const response = await fetch("/api/runs/" + encodeURIComponent(runId));
    const text = await response.text();
    const body = JSON.parse(text);
    if (!response.ok) throw new Error(body.error || response.statusText);
    if (view.name !== "run" || view.runId !== runId) return;
    problem("");
    const changed = text !== view.text;
    view.text = text;
    view.document = body.run;
    view.resumable = body.resumable;
    if (view.graphFor === null) loadGraph(runId);
    if (changed || view.document.status === "running") showRun(); // a running bar grows with the clock
  } catch (error) {
    problem("Cannot read run " + runId + ": " + error.message);
  }
  // a finished run changes only if it is resumed (here or from a terminal): polled less often
  const running = view.document && view.document.status === "running";
  timer = setTimeout(() => refreshRun(runId), running ? POLL_MS : 3 * POLL_MS);
}

function showRun() {
  const doc = view.document;
  $("run-title").textContent = doc.pipeline + " · " + doc.run_id;
  const facts = [
    ["Status", el("span", { class: "badge status-" + doc.status, id: "run-status", text: doc.status })],
    ["Started", shortTime(doc.started_at)],
    ["Ended", shortTime(doc.ended_at)],
    ["Duration", seconds(doc.duration)],
    ["Engine", doc.engine || ""],
    ["User", doc.user || ""],
  ];
  $("run-facts").replaceChildren(
    ...facts
      .filter(([, value]) => value !== "")
      .flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)]),
  );
  const error = doc.error;
  $("run-error").hidden = !error;
  $("run-error").textContent = error ? errorText(error) : "";
  $("resume").hidden = !view.resumable;
  colourGraph();
  showTimeline();
  if (view.selected) showDetails(view.selected);
}

function errorText(error) {
  const where = error.task ? "in " + error.task + ": " : "";
  return where + (error.type || "Error") + ": " + (error.message || "");
}

async function resumeRun() {
  const runId = view.runId;
  $("resume").disabled = true;
  $("resume-message").hidden = true;
  try {
    await getJson("/api/runs/" + encodeURIComponent(runId) + "/resume", {
      method: "POST",
      headers: { "X-Orchestrator-Token": token },
    });
    view.graphFor = null;
  } catch (error) {
    $("resume-message").hidden = false;
    $("resume-message").textContent = "Could not resume: " + error.message;
  }
  $("resume").disabled = false;
  clearTimeout(timer);
  refreshRun(runId);
}

// ---- the graph -------------------------------------------------------------------------------

async function loadGraph(runId) {
  view.graphFor = runId;
  let body;
  try {
    body = await getJson("/api/runs/" + encodeURIComponent(runId) + "/graph");
  } catch (error) {
    body = { svg: null, reason: error.message };
  }
  if (view.name !== "run" || view.runId !== runId) return;
  if (!body.svg) {
    $("graph").replaceChildren(el("p", { id: "graph-note", class: "note", text: "No graph: " + body.reason }));
    return;
  }
  const parsed = new DOMParser().parseFromString(body.svg, "image/svg+xml");
  const svg = parsed.documentElement;
  if (svg.nodeName !== "svg") {
    $("graph").replaceChildren(el("p", { class: "note", text: "No graph: it could not be read" }));
    return;
  }
  sanitise(svg);
  const node = document.importNode(svg, true);
  for (const task of node.querySelectorAll("g.task[data-path]")) {
    task.addEventListener("click", (event) => {
      event.stopPropagation();
      select(graphRecord(task).path);
    });
  }
  $("graph").replaceChildren(node);
  colourGraph();
}

function sanitise(root) {
  for (const bad of root.querySelectorAll("script, foreignObject, iframe, object, embed")) bad.remove();
  for (const node of [root, ...root.querySelectorAll("*")]) {
    for (const attribute of [...node.attributes]) {
      const name = attribute.name.toLowerCase();
      const value = attribute.value.trim().toLowerCase();
      if (name.startsWith("on") || ((name === "href" || name.endsWith(":href")) && !value.startsWith("#"))) {
        node.removeAttribute(attribute.name);
      }
    }
  }
}

// The record a graph box stands for: a task of the pipeline or of a parallel group (those are
// in the document's tasks by name), else a task in a loop's or group's body (its latest record,
// in the last iteration that has one). The path to select is that of the record, or of the
// container when the body's task is drawn once for all its iterations.
function graphRecord(node) {
  const tasks = (view.document && view.document.tasks) || {};
  const parts = node.getAttribute("data-path").split("::")[0].split("/");
  const name = node.getAttribute("data-task");
  if (parts.length === 1 || !tasks[parts[0]] || !(tasks[parts[0]].children || []).length) {
    return { record: tasks[parts[parts.length - 1]] || tasks[name] || null, path: [parts[parts.length - 1]] };
  }
  let found = null;
  const search = (records, rest) => {
    const record = records[rest[0]];
    if (!record) return;
    if (rest.length === 1) {
      found = record;
      return;
    }
    for (const child of record.children || []) search(child.tasks || {}, rest.slice(1));
  };
  search(tasks, parts);
  return { record: found, path: [parts[0]] };
}

function colourGraph() {
  for (const node of $("graph").querySelectorAll("g.task[data-path]")) {
    const { record } = graphRecord(node);
    const status = record ? record.status : "not_run";
    for (const name of [...node.classList]) if (name.startsWith("status-")) node.classList.remove(name);
    node.classList.add("status-" + status);
    node.setAttribute("data-status", status);
    node.classList.toggle("selected", Boolean(view.selected && view.selected.join("/") === node.getAttribute("data-path")));
  }
}

// ---- the timeline ----------------------------------------------------------------------------

function parseTime(iso) {
  return iso ? Date.parse(iso) : null;
}

// Every task record of the run as rows: top-level and parallel-group tasks, then (when opened)
// the iterations or children of a container with their own tasks, indented.
function timelineRows(tasks, path, depth, rows) {
  for (const [name, record] of Object.entries(tasks || {})) {
    const here = path.concat([name]);
    rows.push({ path: here, record, depth, kind: "task" });
    const children = record.children || [];
    const key = here.join("/");
    if (children.length && view.open.has(key)) {
      for (const child of children) {
        const childPath = here.concat(["[" + child.key + "]"]);
        rows.push({ path: childPath, record: null, depth: depth + 1, kind: "child", key: child.key });
        timelineRows(child.tasks, childPath, depth + 2, rows);
      }
    }
  }
  return rows;
}

function span(rows) {
  const doc = view.document;
  let start = parseTime(doc.started_at);
  let end = parseTime(doc.ended_at);
  for (const row of rows) {
    for (const attempt of (row.record && row.record.attempt_log) || []) {
      const from = parseTime(attempt.started_at);
      const to = parseTime(attempt.ended_at);
      if (from !== null && (start === null || from < start)) start = from;
      if (to !== null && (end === null || to > end)) end = to;
    }
  }
  if (doc.status === "running" || end === null) end = Math.max(end || 0, Date.now());
  if (start === null) start = end;
  return { start, end: Math.max(end, start + 1) };
}

function showTimeline() {
  const rows = timelineRows(view.document.tasks, [], 0, []);
  const { start, end } = span(rows);
  const place = (from, to) => ({
    left: (((from - start) / (end - start)) * 100).toFixed(3) + "%",
    width: (Math.max(to - from, 0) / (end - start)) * 100 + "%",
  });
  const now = Date.now();
  const lines = rows.map((row) => {
    const label = el("div", { class: "label", style: null });
    label.style.paddingLeft = row.depth * 1.1 + "em";
    const track = el("div", { class: "track" });
    const path = row.path.join("/");
    if (row.kind === "child") {
      const key = String(row.key);
      label.append(el("span", { class: "child-key", text: /^\d+$/.test(key) ? "iteration " + key : key }));
      return el("div", { class: "row child-row", "data-path": path }, label, track);
    }
    const record = row.record;
    const children = record.children || [];
    if (children.length) {
      const opened = view.open.has(path);
      label.append(
        el("button", {
          type: "button",
          class: "toggle",
          "data-path": path,
          "aria-expanded": opened ? "true" : "false",
          text: (opened ? "▾ " : "▸ ") + children.length,
          onclick: () => {
            if (view.open.has(path)) view.open.delete(path);
            else view.open.add(path);
            showTimeline();
          },
        }),
      );
    }
    label.append(
      el("a", {
        href: "#/runs/" + encodeURIComponent(view.runId),
        class: "task-name",
        text: row.path[row.path.length - 1],
        onclick: (event) => {
          event.preventDefault();
          select(row.path);
        },
      }),
      el("span", { class: "badge status-" + record.status, text: record.status }),
    );
    let previous = null;
    for (const attempt of record.attempt_log || []) {
      const from = parseTime(attempt.started_at);
      const to = parseTime(attempt.ended_at) ?? now;
      if (from === null) continue;
      if (previous !== null && from > previous) {
        const wait = el("div", { class: "wait", title: "waiting " + seconds((from - previous) / 1000) + " before attempt " + attempt.attempt });
        Object.assign(wait.style, place(previous, from));
        track.append(wait);
      }
      const bar = el("div", {
        class: "bar status-" + attempt.status + (attempt.fallback ? " fallback" : ""),
        "data-task": path,
        "data-attempt": attempt.attempt,
        "data-status": attempt.status,
        title: (attempt.fallback ? "fallback" : "attempt " + attempt.attempt) + ": " + attempt.status + " " + seconds(attempt.duration),
        onclick: () => select(row.path),
      });
      Object.assign(bar.style, place(from, to));
      track.append(bar);
      previous = to;
    }
    if (!(record.attempt_log || []).length && record.started_at) {
      const bar = el("div", { class: "bar status-" + record.status, "data-task": path, "data-status": record.status });
      Object.assign(bar.style, place(parseTime(record.started_at), parseTime(record.ended_at) ?? now));
      track.append(bar);
    }
    const selected = view.selected && view.selected.join("/") === path;
    return el("div", { class: "row" + (selected ? " selected" : ""), "data-path": path, "data-status": record.status }, label, track);
  });
  const axis = el(
    "div",
    { class: "row axis" },
    el("div", { class: "label" }),
    el("div", { class: "track", text: seconds((end - start) / 1000) }),
  );
  $("timeline").replaceChildren(...lines, axis);
}

// ---- a task's details ------------------------------------------------------------------------

function recordAt(path) {
  let tasks = view.document.tasks || {};
  let record = null;
  for (let index = 0; index < path.length; index += 1) {
    const part = path[index];
    if (part.startsWith("[") && record) {
      const key = part.slice(1, -1);
      const child = (record.children || []).find((found) => String(found.key) === key);
      tasks = child ? child.tasks : {};
      continue;
    }
    record = tasks[part];
    if (!record) return null;
  }
  return record;
}

function select(path) {
  view.selected = path;
  showDetails(path);
  colourGraph();
  showTimeline();
}

// A task's inputs: one block per input (a script or a prompt shown as written), else as JSON.
function inputsSection(inputs) {
  if (inputs === null || inputs === undefined) return null;
  if (typeof inputs !== "object" || Array.isArray(inputs)) return section("Inputs", inputs);
  return el(
    "section",
    { "data-section": "inputs" },
    el("h3", { text: "Inputs" }),
    ...Object.entries(inputs).flatMap(([name, value]) => [el("h4", { text: name }), el("pre", { text: pretty(value) })]),
  );
}

function closeDetails() {
  view.selected = null;
  $("details").hidden = true;
  $("run-view").classList.remove("with-details");
  colourGraph();
  showTimeline();
}

function section(title, value) {
  if (value === null || value === undefined) return null;
  return el("section", { "data-section": title.toLowerCase() }, el("h3", { text: title }), el("pre", { text: pretty(value) }));
}

function showDetails(path) {
  const record = recordAt(path);
  const panel = $("details");
  panel.hidden = false;
  $("run-view").classList.add("with-details");
  if (!record) {
    panel.replaceChildren(el("h2", { text: path.join(" › ") }), el("p", { class: "note", text: "Not started yet." }));
    return;
  }
  const output = path.length === 1 ? (view.document.outputs || {})[path[0]] : record.output;
  const attempts = (record.attempt_log || []).map((attempt) =>
    el(
      "section",
      { class: "attempt", "data-attempt": attempt.attempt },
      el("h4", {
        text:
          (attempt.fallback ? "Fallback" : "Attempt " + attempt.attempt) +
          " · " + attempt.status + " · " + shortTime(attempt.started_at) + " · " + seconds(attempt.duration),
      }),
      attempt.error ? el("p", { class: "error", text: errorText(attempt.error) }) : null,
      (attempt.printed || []).length ? el("pre", { class: "printed", text: attempt.printed.join("\n") }) : null,
      ...(attempt.llm_calls || []).map((call) =>
        el("p", {
          class: "llm",
          text: call.model + ": " + (call.tokens_in ?? "?") + " tokens in, " + (call.tokens_out ?? "?") + " out, " + seconds(call.latency),
        }),
      ),
    ),
  );
  const parts = [
    el("button", { type: "button", class: "close", text: "×", onclick: closeDetails }),
    el("h2", { text: path.join(" › ") }),
    el("p", {}, el("span", { class: "badge status-" + record.status, text: record.status }),
      " " + (record.attempts ?? (record.attempt_log || []).length) + " attempt(s) · " + seconds(record.duration)),
    inputsSection(record.inputs),
    section("Output", output),
    record.error ? el("section", {}, el("h3", { text: "Error" }), el("p", { class: "error", text: errorText(record.error) })) : null,
    attempts.length ? el("section", {}, el("h3", { text: "Attempts" }), ...attempts) : null,
    (record.children || []).length
      ? el("p", { class: "note", text: record.children.length + " iteration(s) or children: open them in the timeline (▸)." })
      : null,
  ];
  panel.replaceChildren(...parts.filter((part) => part !== null));
}

// ---- start -----------------------------------------------------------------------------------

$("filter-status").addEventListener("change", listFiltersChanged);
$("filter-pipeline").addEventListener("input", listFiltersChanged);
$("filters").addEventListener("submit", (event) => event.preventDefault());
$("newer").addEventListener("click", () => { list.offset = Math.max(0, list.offset - PAGE); listFiltersChangedKeepPage(); });
$("older").addEventListener("click", () => { list.offset += PAGE; listFiltersChangedKeepPage(); });
$("resume").addEventListener("click", resumeRun);
window.addEventListener("hashchange", route);
route();

function listFiltersChangedKeepPage() {
  clearTimeout(timer);
  refreshList();
}
