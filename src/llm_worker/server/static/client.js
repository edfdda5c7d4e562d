/**
 * LLM Worker client: add jobs and stream their text over the HTTP API, from a
 * browser or from Node >= 18. One ES module, no dependencies; it needs only
 * `fetch`, `ReadableStream`, `TextDecoder` and `AbortController`.
 *
 * The worker serves this file at `/client.js`:
 *
 *     import { Client, JobFailed } from "https://worker.example/client.js";
 *
 *     const client = new Client("https://worker.example", { apiKey: "KEY" });
 *     const job = await client.submit("How tall is it?", {
 *       streams: [{ provider: "openai", settings: { model: "gpt-4o-mini" },
 *                   messages: [{ role: "user", content: "{query}" }] }],
 *     });
 *     for await (const event of job) {
 *       if (event.type === "text") output.textContent += event.text;
 *       else if (event.type === "reset") output.textContent = "";  // the job restarted
 *       else if (event.type === "failed") output.textContent = event.message;
 *     }
 *     // or, all at once: const text = await job.text();  (rejects with JobFailed or JobCancelled)
 *
 * The client asks for typed events (`?events=typed`): the model's reasoning, its tool
 * calls (in fragments) and its refusals come as events beside the text, and `done`
 * carries the finished assistant message. A job puts its events together as they are
 * read: `job.message` and `job.toolCalls` (the calls in progress, then whole), and
 * `await job.result()` once it is done, whose `message` goes into the history of the
 * next turn as it is. A server from before typed events sends text only; the message
 * is then put together from it. Events of a type this client does not know (from a
 * newer server) are skipped.
 *
 * A page given a job id and its listen token by its backend follows the job
 * without a key: `new Client().job(jobId, { listenToken }).text()`.
 *
 * A dropped stream is resumed on its own, after the last event seen (capped
 * exponential back-off, then `ConnectionLost`): every event reaches the
 * consumer exactly once.
 *
 * @module llm-worker-client
 */

/**
 * How a stream that dropped is resumed. Times in milliseconds.
 *
 * @typedef {object} RetryOptions
 * @property {number} [initialDelayMs=50] The wait before the first new attempt.
 * @property {number} [maxDelayMs=2000] The wait doubles after each failure, up to this.
 * @property {number} [giveUpAfterMs=60000] Failing for this long in a row throws
 *   `ConnectionLost` (0: give up at the first failure).
 * @property {number} [idleTimeoutMs=45000] A stream that brings nothing for this long
 *   (the server sends a keep-alive comment every 15 s) counts as dropped.
 */

/**
 * What `Job.events()` yields; each is a plain object with a `type`:
 *
 * - `{type: "pending", position}`: queued, `position` 1 being next (sent again when it moves);
 * - `{type: "started", seq}`: an attempt started (after a `reset`, the next one);
 * - `{type: "text", text, seq}`: text to append (several deltas may come merged in one);
 * - `{type: "reasoning", text, seq}`: the model's reasoning (its thinking), apart from the answer;
 * - `{type: "tool_call", index, id, name, arguments, seq}`: a fragment of the `index`-th
 *   tool call (0, 1, ...): `id` and `name` in the fragment that starts the call (else
 *   null), and a piece of its JSON `arguments`, cut anywhere (`job.toolCalls` joins them);
 * - `{type: "refusal", text, seq}`: the model's refusal to answer (no answer, and why);
 * - `{type: "reset", attempt, seq}`: the job restarted after its worker died: the text
 *   so far is void (its reasoning, refusal and tool calls too), the next attempt's follows;
 * - `{type: "done", seq, usage, finishReason, providers, message}` (`message`: the finished
 *   assistant message, null from a server without typed events), `{type: "failed", message, seq}`,
 *   `{type: "cancelled", seq}`:
 *   the end, always the last event;
 * - `{type: "notice", message, seq}`: why the job's listeners wait (e.g. its local
 *   model is loading), an event of the job's log; no text of the answer;
 * - `{type: "notice", message}` (no `seq`): something the server wants known (e.g. its
 *   store is away for a moment); the job goes on.
 *
 * @typedef {{type: "pending", position: number}
 *   | {type: "started", seq: number}
 *   | {type: "text", text: string, seq: number}
 *   | {type: "reasoning", text: string, seq: number}
 *   | {type: "tool_call", index: number, id: string | null, name: string | null,
 *      arguments: string, seq: number}
 *   | {type: "refusal", text: string, seq: number}
 *   | {type: "reset", attempt: number, seq: number}
 *   | {type: "done", seq: number, usage: object | null, finishReason: string | null,
 *      providers: (string | null)[] | null, message: AssistantMessage | null}
 *   | {type: "failed", message: string, seq: number}
 *   | {type: "cancelled", seq: number | null}
 *   | {type: "notice", message: string, seq?: number}} JobEvent
 */

/**
 * A job's state, from `GET /v1/jobs/{id}`.
 *
 * @typedef {object} JobStatus
 * @property {"pending"|"running"|"done"|"failed"|"cancelled"} state
 * @property {number | null} position Its place in the queue while pending, 1 being next.
 * @property {string} output The text of the current attempt so far.
 * @property {object | null} usage When done: the tokens the job took, or null if unknown.
 * @property {string | null} finishReason When done: why the model stopped.
 * @property {(string | null)[] | null} providers When done: the provider that answered
 *   each stream.
 * @property {string | null} error Why it failed, when it did.
 * @property {AssistantMessage | null} message When done: the finished assistant message
 *   (null from a server without typed events).
 */

/**
 * The assistant message of a job's answer, the shape the OpenAI chat-completions API
 * takes back in the history: `content` is null when the answer is only tool calls;
 * `tool_calls`, `refusal` and `reasoning` are there only when there are some.
 *
 * @typedef {{role: "assistant", content: string | null, tool_calls?: ToolCall[],
 *   refusal?: string, reasoning?: string}} AssistantMessage
 */

/**
 * A tool call the model asks for; `function.arguments` is JSON text.
 *
 * @typedef {{id: string, type: "function", function: {name: string, arguments: string}}} ToolCall
 */

/**
 * A finished job, from `job.result()`.
 *
 * @typedef {object} JobResult
 * @property {AssistantMessage} message The message to append to the history as it is.
 * @property {ToolCall[]} toolCalls The tool calls it asks for (`[]` when none).
 * @property {string} text Its text (`""` when it is only tool calls).
 * @property {object | null} usage
 * @property {string | null} finishReason
 * @property {(string | null)[] | null} providers
 */

const DEFAULT_RETRY = Object.freeze({
  initialDelayMs: 50,
  maxDelayMs: 2000,
  giveUpAfterMs: 60000,
  idleTimeoutMs: 45000,
});

// Answers worth asking again: the server or something before it is busy or away.
const TRANSIENT_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);
const TERMINAL = new Set(["done", "failed", "cancelled"]);

// -- errors -------------------------------------------------------------------

/**
 * Any error of this client. For an HTTP error, `status` is its status code, `code` the
 * stable code of its JSON body `{"type":"error","code":...,"message":...}` (what to
 * branch on: `job_not_found`, `queue_full`, `rate_limited`, ...) and `message` the
 * server's message (for people).
 */
export class ClientError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, body?: unknown, cause?: unknown}} [details]
   */
  constructor(message, { status, code, body, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    /** @type {number | undefined} The HTTP status, if the server answered. */
    this.status = status;
    /** @type {string | undefined} The error's stable code, if the server sent one. */
    this.code = code;
    /** @type {unknown} The body of the server's answer (parsed JSON, or text). */
    this.body = body;
  }
}

/**
 * The server refused a request (HTTP 4xx): a bad template, a missing key, a tenant over
 * its limits, a cancel of a job that had ended (409)...; `message` is its reason.
 */
export class RequestRefused extends ClientError {}

/** The job does not exist, expired, or is another tenant's: HTTP 404. */
export class JobNotFound extends RequestRefused {}

/** The job ended with `failed`; `message` says why. */
export class JobFailed extends ClientError {
  /**
   * @param {string} jobId
   * @param {string} message
   */
  constructor(jobId, message) {
    super(message);
    /** @type {string} */
    this.jobId = jobId;
  }
}

/** The job was cancelled. */
export class JobCancelled extends ClientError {
  /** @param {string} jobId */
  constructor(jobId) {
    super(`job ${jobId} was cancelled`);
    /** @type {string} */
    this.jobId = jobId;
  }
}

/** The server could not be reached again for `retry.giveUpAfterMs`; `cause` is the last failure. */
export class ConnectionLost extends ClientError {}

// Names that survive minifiers, for messages and logs.
for (const [cls, name] of [
  [ClientError, "ClientError"],
  [JobNotFound, "JobNotFound"],
  [RequestRefused, "RequestRefused"],
  [JobFailed, "JobFailed"],
  [JobCancelled, "JobCancelled"],
  [ConnectionLost, "ConnectionLost"],
]) {
  Object.defineProperty(cls.prototype, "name", { value: name, configurable: true, writable: true });
}

// -- the client -----------------------------------------------------------------

/** A worker's HTTP API. */
export class Client {
  /**
   * @param {string | URL} [url] The worker's base URL (a path prefix is kept); in a
   *   browser, the page's origin by default.
   * @param {object} [options]
   * @param {string} [options.apiKey] Sent as `Authorization: Bearer KEY`.
   * @param {typeof fetch} [options.fetch] The `fetch` to use (the global one by default).
   * @param {RetryOptions | number} [options.retry] How dropped streams are resumed; a
   *   number is `giveUpAfterMs`.
   */
  constructor(url, { apiKey, fetch: fetchImpl, retry } = {}) {
    const base = url ?? globalThis.location?.origin;
    if (base === undefined || base === null || base === "") {
      throw new TypeError("Client needs the worker's URL (there is no page origin to default to)");
    }
    /** @type {string} The base URL, without a trailing slash. */
    this.url = String(base).replace(/\/+$/, "");
    /** @type {string | undefined} */
    this.apiKey = apiKey;
    const impl = fetchImpl ?? globalThis.fetch;
    if (typeof impl !== "function") {
      throw new TypeError("Client needs fetch: pass options.fetch on a runtime without one");
    }
    this._fetch = impl;
    /** @type {Required<RetryOptions>} */
    this.retry = retryPolicy(retry);
  }

  /**
   * Adds a job: `POST /v1/jobs`.
   *
   * @param {string} query The user's question, `{query}` in the template.
   * @param {object} assistant The assistant template (`{streams: [...]}`).
   * @param {object} [options]
   * @param {Array<{role: string, content: string}>} [options.history] Earlier messages.
   * @param {Record<string, string | number | boolean>} [options.variables] The template's variables.
   * @returns {Promise<Job>} The queued job; iterate it, or await `job.text()`.
   * @throws {RequestRefused} The server refused it (4xx), with its reason as `message`.
   * @throws {ConnectionLost} The server could not be reached, or the connection dropped before
   *   its answer: the job may or may not have been added, and is not sent again (which
   *   could run it twice).
   * @throws {ClientError} The server failed (5xx).
   */
  async submit(query, assistant, { history, variables } = {}) {
    /** @type {Record<string, unknown>} */
    const body = { query, assistant };
    if (history !== undefined) body.history = history;
    if (variables !== undefined) body.variables = variables;
    let response;
    try {
      response = await this._send("POST", "/v1/jobs", { body });
    } catch (error) {
      // Not retried: the job may have been added before the connection failed.
      throw new ConnectionLost(`cannot reach ${this.url}: ${describe(error)}`, { cause: error });
    }
    if (response.status !== 201 && response.status !== 200) {
      throw await errorFrom(response);
    }
    const reply = await response.json();
    return new Job(this, String(reply.job_id), { listenToken: reply.listen_token });
  }

  /**
   * A job added earlier (by this client or another), to follow or cancel.
   *
   * @param {string} jobId
   * @param {object} [options]
   * @param {number} [options.after=0] Start after this seq: its events come next.
   * @param {string} [options.listenToken] The job's listen token, used instead of the
   *   client's key (it allows following the job and asking its status, nothing else).
   * @returns {Job}
   */
  job(jobId, { after = 0, listenToken } = {}) {
    return new Job(this, String(jobId), { after, listenToken, useToken: listenToken !== undefined });
  }

  /**
   * One HTTP request to the worker (not retried).
   *
   * @param {string} method
   * @param {string} path
   * @param {{body?: unknown, key?: string, headers?: Record<string, string>, signal?: AbortSignal}} [options]
   * @returns {Promise<Response>}
   * @internal
   */
  _send(method, path, { body, key, headers = {}, signal } = {}) {
    const all = { accept: "application/json", ...headers };
    const credential = key ?? this.apiKey;
    if (credential) all.authorization = `Bearer ${credential}`;
    /** @type {RequestInit} */
    const init = { method, headers: all, signal };
    if (body !== undefined) {
      all["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const doFetch = this._fetch; // called unbound: a browser's fetch refuses another `this`
    return doFetch(this.url + path, init);
  }
}

// -- a job ----------------------------------------------------------------------

/**
 * One job: its events, its text, its status; cancel it.
 *
 * A `Job` remembers where its stream stands (`lastSeq`): `events()` called again goes
 * on from there. Consume one stream of a job at a time.
 */
export class Job {
  /**
   * @param {Client} client
   * @param {string} id
   * @param {{after?: number, listenToken?: string, useToken?: boolean}} [options]
   */
  constructor(client, id, { after = 0, listenToken, useToken = false } = {}) {
    if (!Number.isInteger(after) || after < 0) {
      throw new TypeError(`after must be a seq, a whole number >= 0, not ${after}`);
    }
    /** @type {Client} */
    this.client = client;
    /** @type {string} */
    this.id = id;
    /** @type {string | null} A capability to follow this job only, to hand to a page (with keys on). */
    this.listenToken = listenToken ?? null;
    /** @type {number} The seq of the last event seen: a stream resumes after it. */
    this.lastSeq = after;
    this._key = useToken ? listenToken : undefined;
    this._answer = new Assembly();
    /** @type {JobEvent | null} */
    this._end = null;
    /** @type {number | undefined} */
    this._position = undefined;
  }

  /** @returns {AsyncGenerator<JobEvent, void, undefined>} the same as `events()`. */
  [Symbol.asyncIterator]() {
    return this.events();
  }

  /**
   * The job's events as they happen, from after `lastSeq`, ending with its terminal
   * event (`done`, `failed` or `cancelled`). A stream that drops is resumed; events
   * seen already are not repeated. Leaving the loop early closes the stream.
   *
   * @returns {AsyncGenerator<JobEvent, void, undefined>}
   * @throws {JobNotFound} The job does not exist (or is not this key's).
   * @throws {RequestRefused} The server refused to stream it (e.g. 401, 403).
   * @throws {ConnectionLost} The stream could not be resumed within `retry.giveUpAfterMs`.
   */
  async *events() {
    if (this._end !== null) return;
    const retry = this.client.retry;
    const path = `/v1/jobs/${encodeURIComponent(this.id)}/events?events=typed`;
    /** @type {number | null} */
    let failingSince = null;
    let delay = retry.initialDelayMs;
    /** @type {unknown} */
    let lastError = null;
    let waitAtLeast = 0;

    for (;;) {
      if (failingSince !== null) {
        const elapsed = Date.now() - failingSince;
        if (elapsed >= retry.giveUpAfterMs) {
          throw new ConnectionLost(
            `lost the event stream of job ${this.id} and could not resume it for ` +
              `${Math.round(elapsed)} ms: ${describe(lastError)}`,
            { cause: lastError },
          );
        }
        await sleep(Math.min(Math.max(delay, waitAtLeast), retry.giveUpAfterMs - elapsed));
        delay = Math.min(delay * 2, retry.maxDelayMs);
        waitAtLeast = 0;
      }

      const controller = new AbortController();
      const headers = { accept: "text/event-stream" };
      if (this.lastSeq > 0) headers["last-event-id"] = String(this.lastSeq);
      let response;
      try {
        response = await this.client._send("GET", path, {
          key: this._key,
          headers,
          signal: controller.signal,
        });
      } catch (error) {
        lastError = error;
        failingSince ??= Date.now();
        continue;
      }

      if (response.status === 204) {
        // The job ended while we were away, and nothing follows what we saw.
        const status = await this.status();
        const end = this._endFromStatus(status);
        if (end !== null) {
          yield end;
          return;
        }
        lastError = new Error(`204 for job ${this.id}, which is ${status.state}`);
        failingSince ??= Date.now();
        continue;
      }
      if (!response.ok) {
        const error = await errorFrom(response);
        if (!TRANSIENT_STATUS.has(response.status)) throw error;
        lastError = error;
        waitAtLeast = retryAfterMs(response);
        failingSince ??= Date.now();
        continue;
      }

      const openedAt = Date.now();
      let progressed = false;
      const messages = readEvents(response, controller, retry.idleTimeoutMs);
      try {
        for (;;) {
          let next;
          try {
            next = await messages.next();
          } catch (error) {
            lastError = error;
            break;
          }
          if (next.done) {
            lastError = new Error("the event stream ended before the job did");
            break;
          }
          const event = this._accept(next.value);
          if (event === null) continue;
          if (event.type !== "notice" || event.seq !== undefined) progressed = true;
          yield event;
          if (TERMINAL.has(event.type)) return;
        }
      } finally {
        controller.abort();
        messages.return(undefined).catch(() => {});
      }
      // A stream that brought news of the job, or lasted, was no failure: count anew.
      if (progressed || Date.now() - openedAt >= retry.maxDelayMs) {
        failingSince = null;
        delay = retry.initialDelayMs;
      }
      failingSince ??= Date.now();
    }
  }

  /**
   * The job's whole text, once it is done: the text of the events from `after` (for
   * `client.job(id, {after})`) or from the start, that of attempts that were reset left out.
   *
   * @returns {Promise<string>}
   * @throws {JobFailed} The job failed (`message` says why).
   * @throws {JobCancelled} The job was cancelled.
   * @throws {JobNotFound | ConnectionLost | ClientError} As `events()`.
   */
  async text() {
    await this._finish();
    return this._answer.text;
  }

  /**
   * The finished job: its assistant message to append to the history, its tool calls,
   * text, usage and finish reason.
   *
   * @returns {Promise<JobResult>}
   * @throws {JobFailed | JobCancelled | JobNotFound | ConnectionLost | ClientError} As `text()`.
   */
  async result() {
    const end = await this._finish();
    const message = this.message;
    return {
      message,
      toolCalls: message.tool_calls ?? [],
      text: typeof message.content === "string" ? message.content : "",
      usage: end.usage,
      finishReason: end.finishReason,
      providers: end.providers,
    };
  }

  /**
   * The assistant message of the events read so far (text, reasoning, refusal, tool
   * calls in progress; a `reset` voids them); once done, the finished one the server
   * sent with `done`, whole even if the job was followed from a later seq.
   *
   * @returns {AssistantMessage}
   */
  get message() {
    const end = this._end;
    if (end !== null && end.type === "done" && end.message) return end.message;
    return this._answer.message();
  }

  /** @returns {ToolCall[]} The tool calls of `message`, their arguments as far as they came. */
  get toolCalls() {
    return this.message.tool_calls ?? [];
  }

  /**
   * Reads the events to the job's end; its `done`.
   *
   * @returns {Promise<JobEvent & {type: "done"}>}
   */
  async _finish() {
    for await (const _event of this.events()) {
      // _accept puts the answer together.
    }
    const end = this._end;
    if (end === null) throw new ClientError(`the events of job ${this.id} ended without its end`);
    if (end.type === "failed") throw new JobFailed(this.id, end.message);
    if (end.type === "cancelled") throw new JobCancelled(this.id);
    return end;
  }

  /** @returns {boolean} Whether the job's end has been seen. */
  get ended() {
    return this._end !== null;
  }

  /**
   * The job's state, queue position, text so far and error: `GET /v1/jobs/{id}`.
   * Asked again (with the streams' back-off) while the server cannot be reached.
   *
   * @returns {Promise<JobStatus>}
   * @throws {JobNotFound | RequestRefused | ConnectionLost | ClientError}
   */
  async status() {
    const path = `/v1/jobs/${encodeURIComponent(this.id)}?events=typed`;
    const response = await this._retrying("GET", path);
    if (!response.ok) throw await errorFrom(response);
    const body = await response.json();
    return {
      state: body.state,
      position: typeof body.position === "number" ? body.position : null,
      output: typeof body.output === "string" ? body.output : "",
      error: typeof body.error === "string" ? body.error : null,
      usage: body.usage ?? null,
      finishReason: body.finish_reason ?? null,
      providers: body.providers ?? null,
      message: isObject(body.message) ? body.message : null,
    };
  }

  /**
   * Stops a queued or running job: `POST /v1/jobs/{id}/cancel`; resolves once the
   * server did. Its events then end with `cancelled`.
   *
   * @returns {Promise<void>}
   * @throws {RequestRefused} The job had ended already (`status` 409), or this key may not
   *   cancel it (403, e.g. a listen token).
   * @throws {JobNotFound} The server knows no such job.
   * @throws {ConnectionLost} The server could not be reached, or the connection dropped
   *   before its answer (the job may or may not be cancelled; not sent again).
   */
  async cancel() {
    let response;
    try {
      response = await this.client._send(
        "POST",
        `/v1/jobs/${encodeURIComponent(this.id)}/cancel`,
        { key: this._key },
      );
    } catch (error) {
      throw new ConnectionLost(`cannot reach ${this.client.url}: ${describe(error)}`, {
        cause: error,
      });
    }
    if (!response.ok) throw await errorFrom(response);
    await response.body?.cancel().catch(() => {});
  }

  /**
   * A request, sent again (with the streams' back-off) while the server cannot be
   * reached or answers that it is busy or away.
   *
   * @param {string} method
   * @param {string} path
   * @returns {Promise<Response>} The first answer not worth asking again for.
   */
  async _retrying(method, path) {
    const retry = this.client.retry;
    let delay = retry.initialDelayMs;
    const started = Date.now();
    for (;;) {
      let lastError;
      let waitAtLeast = 0;
      try {
        const response = await this.client._send(method, path, { key: this._key });
        if (!TRANSIENT_STATUS.has(response.status)) return response;
        lastError = await errorFrom(response);
        waitAtLeast = retryAfterMs(response);
        if (Date.now() - started >= retry.giveUpAfterMs) throw lastError;
      } catch (error) {
        if (error instanceof ClientError) throw error;
        lastError = error;
        if (Date.now() - started >= retry.giveUpAfterMs) {
          throw new ConnectionLost(`cannot reach ${this.client.url}: ${describe(error)}`, {
            cause: error,
          });
        }
      }
      const left = retry.giveUpAfterMs - (Date.now() - started);
      await sleep(Math.max(0, Math.min(Math.max(delay, waitAtLeast), left)));
      delay = Math.min(delay * 2, retry.maxDelayMs);
    }
  }

  /**
   * The event of a frame, or null for a frame to skip (seen already, or unknown).
   *
   * @param {{event: string, data: string, id: string | null}} message
   * @returns {JobEvent | null}
   */
  _accept(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return null;
    }
    if (frame === null || typeof frame !== "object") return null;
    const type = frame.type ?? message.event;
    if (type === "pending") {
      if (frame.position === this._position) return null;
      this._position = frame.position;
      return { type: "pending", position: frame.position };
    }
    if (type === "error") return { type: "notice", message: String(frame.message ?? "") };
    const seq = typeof frame.seq === "number" ? frame.seq : null;
    if (seq !== null) {
      // Seen already: a resumed stream overlapping what came before. An end is let
      // through even so (once: nothing follows it).
      if (seq <= this.lastSeq && !TERMINAL.has(type)) return null;
      this.lastSeq = Math.max(this.lastSeq, seq);
    }
    switch (type) {
      case "running":
        this._position = undefined;
        if (!frame.message) return { type: "started", seq };
        this._answer.text += frame.message;
        return { type: "text", text: frame.message, seq };
      case "reasoning":
      case "refusal": {
        const text = String(frame.message ?? "");
        this._answer[type] += text;
        return { type, text, seq };
      }
      case "tool_call":
        return this._answer.toolCall(frame, seq);
      case "notice":
        return { type: "notice", message: String(frame.message ?? ""), seq };
      case "reset":
        this._answer = new Assembly();
        return { type: "reset", attempt: frame.attempt, seq };
      case "done":
        return (this._end = {
          type: "done",
          seq,
          usage: frame.usage ?? null,
          finishReason: frame.finish_reason ?? null,
          providers: frame.providers ?? null,
          message: isObject(frame.message) ? frame.message : null,
        });
      case "failed":
        return (this._end = { type: "failed", message: String(frame.message ?? ""), seq });
      case "cancelled":
        return (this._end = { type: "cancelled", seq });
      default:
        return null; // a type this client does not know yet
    }
  }

  /**
   * The terminal event of a job that ended while the stream was away.
   *
   * @param {JobStatus} status
   * @returns {JobEvent | null} null if it has not ended.
   */
  _endFromStatus(status) {
    const seq = this.lastSeq;
    switch (status.state) {
      case "done":
        return (this._end = {
          type: "done",
          seq,
          usage: status.usage,
          finishReason: status.finishReason,
          providers: status.providers,
          message: status.message,
        });
      case "failed":
        return (this._end = { type: "failed", message: String(status.error ?? ""), seq });
      case "cancelled":
        return (this._end = { type: "cancelled", seq });
      default:
        return null;
    }
  }
}

// -- the answer ---------------------------------------------------------------------

/**
 * The assistant message a job's events put together as they are read: text, reasoning,
 * refusal, and each tool call from its fragments (the first says its id and name, each
 * brings a piece of its arguments).
 */
class Assembly {
  constructor() {
    this.text = "";
    this.reasoning = "";
    this.refusal = "";
    /** @type {Map<number, {id: string, name: string, arguments: string}>} */
    this.calls = new Map();
  }

  /**
   * Takes in a `tool_call` frame; its event.
   *
   * @param {Record<string, unknown>} frame
   * @param {number | null} seq
   * @returns {JobEvent | null} null for a frame without its index.
   */
  toolCall(frame, seq) {
    const index = frame.index;
    if (typeof index !== "number" || !Number.isInteger(index)) return null; // not a fragment
    const id = typeof frame.id === "string" ? frame.id : null;
    const name = typeof frame.name === "string" ? frame.name : null;
    const args = typeof frame.arguments === "string" ? frame.arguments : "";
    let call = this.calls.get(index);
    if (call === undefined) this.calls.set(index, (call = { id: "", name: "", arguments: "" }));
    if (id) call.id = id;
    if (name) call.name = name;
    call.arguments += args;
    return { type: "tool_call", index, id, name, arguments: args, seq };
  }

  /** @returns {AssistantMessage} */
  message() {
    /** @type {AssistantMessage} */
    const message = { role: "assistant", content: this.text };
    if (this.calls.size > 0) {
      message.tool_calls = [...this.calls.entries()]
        .sort(([a], [b]) => a - b)
        .map(([, call]) => ({
          id: call.id,
          type: "function",
          function: { name: call.name, arguments: call.arguments },
        }));
      if (this.text === "") message.content = null;
    }
    if (this.refusal !== "") message.refusal = this.refusal;
    if (this.reasoning !== "") message.reasoning = this.reasoning;
    return message;
  }
}

// -- Server-Sent Events -----------------------------------------------------------

/**
 * The events of an SSE response body, parsed as the HTML standard says: lines end
 * with CRLF, LF or CR (wherever the chunks split), `:` starts a comment, `data:`
 * lines join with newlines, a blank line ends an event.
 *
 * @param {Response} response
 * @param {AbortController} controller Aborted when nothing comes for `idleMs`.
 * @param {number} idleMs
 * @returns {AsyncGenerator<{event: string, data: string, id: string | null}>}
 */
async function* readEvents(response, controller, idleMs) {
  if (response.body === null) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let timer = null;
  const arm = () => {
    if (timer !== null) clearTimeout(timer);
    if (idleMs > 0 && Number.isFinite(idleMs)) {
      timer = setTimeout(() => controller.abort(new Error(`nothing came for ${idleMs} ms`)), idleMs);
    }
  };
  let buffer = "";
  let data = [];
  let event = "";
  let id = null;
  let hasData = false;
  try {
    arm();
    for (;;) {
      const { done, value } = await reader.read();
      arm();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let start = 0;
      for (;;) {
        let end = -1;
        for (let i = start; i < buffer.length; i++) {
          const c = buffer.charCodeAt(i);
          if (c === 10 || c === 13) {
            end = i;
            break;
          }
        }
        if (end === -1) break;
        let next = end + 1;
        if (buffer.charCodeAt(end) === 13) {
          // A CR at the end of what came so far may be the first half of a CRLF.
          if (next === buffer.length && !done) break;
          if (buffer.charCodeAt(next) === 10) next += 1;
        }
        const line = buffer.slice(start, end);
        start = next;
        if (line === "") {
          if (hasData) yield { event: event || "message", data: data.join("\n"), id };
          data = [];
          hasData = false;
          event = "";
          continue;
        }
        if (line.charCodeAt(0) === 58) continue; // ":" a comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.charCodeAt(0) === 32) value = value.slice(1);
        if (field === "data") {
          data.push(value);
          hasData = true;
        } else if (field === "event") {
          event = value;
        } else if (field === "id") {
          if (!value.includes("\0")) id = value;
        }
        // "retry" and unknown fields: nothing this client needs.
      }
      buffer = buffer.slice(start);
      if (done) return; // an event without its blank line is incomplete: dropped
    }
  } finally {
    if (timer !== null) clearTimeout(timer);
    reader.cancel().catch(() => {});
  }
}

// -- helpers ------------------------------------------------------------------------

/**
 * @param {RetryOptions | number | false | undefined | null} retry
 * @returns {Required<RetryOptions>}
 */
function retryPolicy(retry) {
  if (retry === undefined || retry === null) return { ...DEFAULT_RETRY };
  if (retry === false) return { ...DEFAULT_RETRY, giveUpAfterMs: 0 };
  if (typeof retry === "number") return { ...DEFAULT_RETRY, giveUpAfterMs: retry };
  const policy = { ...DEFAULT_RETRY };
  for (const name of Object.keys(DEFAULT_RETRY)) {
    if (retry[name] !== undefined) policy[name] = Number(retry[name]);
  }
  return policy;
}

/**
 * The error an HTTP answer stands for, with the server's message and code:
 * `JobNotFound` for the code `job_not_found`, `RequestRefused` for any other 4xx,
 * else `ClientError` (or `Kind`).
 *
 * @param {Response} response
 * @param {typeof ClientError} [Kind]
 * @returns {Promise<ClientError>}
 */
async function errorFrom(response, Kind) {
  let body;
  let message = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  try {
    const text = await response.text();
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    if (body !== null && typeof body === "object" && typeof body.message === "string") {
      message = body.message;
    } else if (typeof body === "string" && body.trim() !== "") {
      message = body.trim().slice(0, 1000);
    }
  } catch {
    // No readable body: the status says it all.
  }
  const code =
    body !== null && typeof body === "object" && typeof body.code === "string" ? body.code : undefined;
  // A body without a code (a server from before codes, a proxy's page): a 404 is taken
  // for an unknown job, as the job routes are the only ones this client asks for.
  const notFound = code === undefined ? response.status === 404 : code === "job_not_found";
  Kind ??= notFound ? JobNotFound : response.status < 500 ? RequestRefused : ClientError;
  return new Kind(message, { status: response.status, code, body });
}

/**
 * @param {Response} response
 * @returns {number} The wait `Retry-After` asks for, in milliseconds (0 if none).
 */
function retryAfterMs(response) {
  const value = response.headers.get("retry-after");
  if (value === null) return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? 0 : Math.max(0, date - Date.now());
}

/** @param {unknown} error */
function describe(error) {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? ` (${error.cause.message})` : "";
    return `${error.message}${cause}`;
  }
  return String(error);
}

/** @param {unknown} value @returns {value is Record<string, unknown>} */
function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** @param {number} ms */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}
