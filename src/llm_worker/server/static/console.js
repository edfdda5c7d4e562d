/**
 * The worker's web console (/console): compose and submit a job, follow, cancel and
 * ask the status of any job by id, and watch the queue and the recent jobs.
 *
 * Built on the browser client the worker serves (/client.js), from the same origin:
 * no build step, no dependency, nothing loaded from elsewhere. Whatever the server
 * or a model sends is shown as text (textContent), never parsed as HTML.
 *
 * @module llm-worker-console
 */

import { Client, ClientError } from "/client.js";

const KEY_STORAGE = "llm-worker.api-key";
const REFRESH_MS = 3000;
const RECENT_LIMIT = 25;
const DEFAULT_TEMPLATE = {
  streams: [
    {
      provider: "openai",
      settings: { model: "gpt-4o-mini" },
      messages: [
        { role: "system", content: "You are a helpful assistant." },
        { insert: "history" },
        { role: "user", content: "{query}" },
      ],
    },
  ],
};

/** @param {string} id @returns {any} */
const $ = (id) => {
  const element = document.getElementById(id);
  if (element === null) throw new Error(`the console page has no #${id}`);
  return element;
};

const ui = {
  apiKey: $("api-key"),
  keyState: $("key-state"),
  providers: $("providers"),
  inserts: $("inserts"),
  pipelines: $("pipelines"),
  catalogError: $("catalog-error"),
  template: $("template"),
  templateError: $("template-error"),
  query: $("query"),
  history: $("history"),
  historyError: $("history-error"),
  submit: $("submit"),
  submitError: $("submit-error"),
  output: $("output"),
  jobId: $("job-id"),
  after: $("after"),
  follow: $("follow"),
  status: $("status"),
  cancel: $("cancel"),
  jobState: $("job-state"),
  jobPosition: $("job-position"),
  jobError: $("job-error"),
  events: $("events"),
  queued: $("queued"),
  running: $("running"),
  connections: $("connections"),
  healthError: $("health-error"),
  recentError: $("recent-error"),
  recentBody: $("recent").querySelector("tbody"),
  refreshed: $("refreshed"),
};

// -- the key and the client ------------------------------------------------------

/** @returns {string | undefined} */
function apiKey() {
  const key = ui.apiKey.value.trim();
  return key === "" ? undefined : key;
}

let client = new Client(location.origin);

function keyChanged() {
  const key = apiKey();
  if (key === undefined) sessionStorage.removeItem(KEY_STORAGE);
  else sessionStorage.setItem(KEY_STORAGE, key);
  ui.keyState.textContent = key === undefined ? "no key sent" : "key kept in this tab only";
  client = new Client(location.origin, { apiKey: key });
  loadCatalog();
  refresh();
}

/**
 * A JSON request to the worker with the key, for the endpoints the client has no
 * method for. Rejects with the server's message on an error status.
 *
 * @param {string} path
 * @returns {Promise<any>}
 */
async function getJSON(path) {
  const headers = { accept: "application/json" };
  const key = apiKey();
  if (key !== undefined) headers.authorization = `Bearer ${key}`;
  const response = await fetch(path, { headers });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: the status says it all.
  }
  if (!response.ok) {
    const message =
      body !== null && typeof body.message === "string"
        ? body.message
        : body !== null && typeof body.status === "string"
          ? body.status
          : `HTTP ${response.status}`;
    throw new ClientError(message, { status: response.status, body });
  }
  return body;
}

/** @param {unknown} error */
function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

// -- the catalog -------------------------------------------------------------------

async function loadCatalog() {
  try {
    const catalog = await getJSON("/v1/catalog");
    ui.providers.textContent = catalog.providers.join(", ") || "none";
    ui.inserts.textContent = catalog.inserts.join(", ") || "none";
    ui.pipelines.textContent = catalog.pipelines.join(", ") || "none";
    ui.catalogError.textContent = "";
  } catch (error) {
    for (const list of [ui.providers, ui.inserts, ui.pipelines]) list.textContent = "?";
    ui.catalogError.textContent = messageOf(error);
  }
}

// -- submitting --------------------------------------------------------------------

/**
 * The value of a JSON field, or null after showing why it is not valid.
 *
 * @param {HTMLTextAreaElement} field
 * @param {HTMLElement} errorLine
 * @param {(value: unknown) => string | null} check The problem with a parsed value, if any.
 */
function parsedField(field, errorLine, check) {
  let value;
  try {
    value = JSON.parse(field.value);
  } catch (error) {
    errorLine.textContent = `not valid JSON: ${messageOf(error)}`;
    return null;
  }
  const problem = check(value);
  errorLine.textContent = problem ?? "";
  return problem === null ? value : null;
}

async function submit() {
  ui.submitError.textContent = "";
  const template = parsedField(ui.template, ui.templateError, (value) =>
    value !== null && typeof value === "object" && !Array.isArray(value)
      ? null
      : "the template must be a JSON object, {\"streams\": [...]}",
  );
  const history = parsedField(ui.history, ui.historyError, (value) =>
    Array.isArray(value) ? null : "the history must be a JSON list of {role, content}",
  );
  if (template === null || history === null) return;
  ui.submit.disabled = true;
  let job;
  try {
    job = await client.submit(ui.query.value, template, { history });
  } catch (error) {
    // A request the server will not queue: a 400 or 413 is about what the editor holds.
    const status = error instanceof ClientError ? error.status : undefined;
    if (status === 400 || status === 413) ui.templateError.textContent = messageOf(error);
    else ui.submitError.textContent = messageOf(error);
    return;
  } finally {
    ui.submit.disabled = false;
  }
  ui.jobId.value = job.id;
  ui.after.value = "0";
  refresh();
  await follow(job);
}

// -- one job -----------------------------------------------------------------------

let following = 0;

/** @param {string} state */
function showState(state) {
  ui.jobState.textContent = state;
  ui.jobState.className = `state state-${state}`;
}

/**
 * @param {number | null | undefined} seq
 * @param {string} type
 * @param {string} detail
 */
function logEvent(seq, type, detail) {
  const item = document.createElement("li");
  item.dataset.type = type;
  if (typeof seq === "number") item.dataset.seq = String(seq);
  for (const [cls, text] of [
    ["seq", typeof seq === "number" ? String(seq) : "–"],
    ["type", type],
    ["detail", detail],
  ]) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    item.append(span);
  }
  ui.events.append(item);
  ui.events.scrollTop = ui.events.scrollHeight;
}

/** @param {import("/client.js").JobEvent} event */
function showEvent(event) {
  switch (event.type) {
    case "pending":
      showState("pending");
      ui.jobPosition.textContent = `position ${event.position}`;
      logEvent(null, "pending", `position ${event.position}`);
      return;
    case "started":
      showState("running");
      ui.jobPosition.textContent = "";
      logEvent(event.seq, "started", "");
      return;
    case "text":
      ui.output.textContent += event.text;
      logEvent(event.seq, "text", JSON.stringify(event.text));
      return;
    case "reset":
      ui.output.textContent = "";
      logEvent(event.seq, "reset", `attempt ${event.attempt}: the text so far is void`);
      return;
    case "notice":
      logEvent(null, "notice", event.message);
      return;
    default:
      showState(event.type);
      ui.jobPosition.textContent = "";
      logEvent(event.seq, event.type, endDetail(event));
      if (event.type === "failed") ui.jobError.textContent = event.message;
  }
}

/**
 * What a job's end says: why it failed, or what it took and why the answer ended.
 *
 * @param {any} event
 * @returns {string}
 */
function endDetail(event) {
  if (event.type === "failed") return event.message;
  if (event.type !== "done") return "";
  const usage = event.usage
    ? `${event.usage.prompt_tokens ?? "?"} tokens in, ${event.usage.completion_tokens ?? "?"} out`
    : "usage unknown";
  return event.finishReason ? `${usage} (${event.finishReason})` : usage;
}

/**
 * Shows the job's events as they come, in place of whatever was followed before.
 *
 * @param {import("/client.js").Job} job
 */
async function follow(job) {
  const mine = ++following;
  ui.output.textContent = "";
  ui.events.replaceChildren();
  ui.jobError.textContent = "";
  ui.jobPosition.textContent = "";
  showState("…");
  try {
    for await (const event of job.events()) {
      if (mine !== following) break; // another job is shown now
      showEvent(event);
    }
  } catch (error) {
    if (mine === following) ui.jobError.textContent = messageOf(error);
  }
  if (mine === following) refresh();
}

/** @returns {string | null} the job id typed, or null after saying it is missing. */
function typedJobId() {
  const id = ui.jobId.value.trim();
  ui.jobError.textContent = id === "" ? "type a job id first" : "";
  return id === "" ? null : id;
}

function followTyped() {
  const id = typedJobId();
  if (id === null) return;
  const after = Number(ui.after.value || "0");
  if (!Number.isInteger(after) || after < 0) {
    ui.jobError.textContent = "after must be a seq, a whole number >= 0";
    return;
  }
  follow(client.job(id, { after }));
}

async function statusOfTyped() {
  const id = typedJobId();
  if (id === null) return;
  try {
    const status = await client.job(id).status();
    showState(status.state);
    ui.jobPosition.textContent =
      status.position !== null ? `position ${status.position}` : `${status.output.length} characters of output`;
    ui.jobError.textContent = status.error ?? "";
  } catch (error) {
    ui.jobError.textContent = messageOf(error);
  }
}

async function cancelTyped() {
  const id = typedJobId();
  if (id === null) return;
  try {
    await client.job(id).cancel();
    showState("cancelled");
    ui.jobPosition.textContent = "";
  } catch (error) {
    ui.jobError.textContent = messageOf(error);
  }
  refresh();
}

// -- the overview -------------------------------------------------------------------

/** @param {number | null} seconds */
function clock(seconds) {
  return typeof seconds === "number" ? new Date(seconds * 1000).toTimeString().slice(0, 8) : "";
}

/** @param {Array<Record<string, any>>} jobs */
function showRecent(jobs) {
  const rows = jobs.map((job) => {
    const row = document.createElement("tr");
    row.dataset.jobId = job.job_id;
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = job.job_id.slice(0, 8);
    open.title = `show job ${job.job_id}`;
    open.addEventListener("click", () => {
      ui.jobId.value = job.job_id;
      ui.after.value = "0";
      followTyped();
    });
    const cells = {
      job: open,
      state: job.state,
      created: clock(job.created_at),
      finished: clock(job.finished_at),
      attempt: String(job.attempt),
      tenant: job.tenant || "–",
      error: job.error ?? "",
    };
    for (const [name, content] of Object.entries(cells)) {
      const cell = document.createElement("td");
      cell.className = name === "state" ? `state state-${job.state}` : name;
      cell.append(content);
      row.append(cell);
    }
    return row;
  });
  ui.recentBody.replaceChildren(...rows);
}

let refreshing = null;
let refreshAgain = false;

/** Reads /healthz and the recent jobs again; one read at a time, none missed. */
function refresh() {
  if (refreshing !== null) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      await Promise.all([refreshHealth(), refreshRecent()]);
    } while (refreshAgain);
    ui.refreshed.textContent = `as of ${clock(Date.now() / 1000)}`;
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

async function refreshHealth() {
  try {
    const health = await getJSON("/healthz");
    ui.queued.textContent = String(health.queued);
    ui.running.textContent = String(health.running);
    ui.connections.textContent = String(health.connections);
    ui.healthError.textContent = "";
  } catch (error) {
    ui.healthError.textContent = `/healthz: ${messageOf(error)}`;
  }
}

async function refreshRecent() {
  try {
    const listing = await getJSON(`/v1/jobs?limit=${RECENT_LIMIT}`);
    showRecent(listing.jobs);
    ui.recentError.textContent = "";
  } catch (error) {
    ui.recentError.textContent = `recent jobs: ${messageOf(error)}`;
  }
}

// -- wiring ----------------------------------------------------------------------------

ui.template.value = JSON.stringify(DEFAULT_TEMPLATE, null, 2);
ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
ui.apiKey.addEventListener("change", keyChanged);
ui.submit.addEventListener("click", submit);
ui.follow.addEventListener("click", followTyped);
ui.status.addEventListener("click", statusOfTyped);
ui.cancel.addEventListener("click", cancelTyped);
for (const field of [ui.template, ui.query, ui.history]) {
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) submit();
  });
}
keyChanged();
setInterval(refresh, REFRESH_MS);
document.body.dataset.ready = "true";
