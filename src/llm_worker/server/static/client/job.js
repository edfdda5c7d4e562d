/**
 * One job over the HTTP API (`Job`): its event stream, resumed when it drops, its
 * status, its cancel. The I/O shell around a `JobSession`, which keeps the rules.
 *
 * @module llm-worker-client/job
 */

import { ClientError, ConnectionLost, JobCancelled, JobFailed, describe, errorFrom } from "./errors.js";
import { TERMINAL, decodeStatus } from "./events.js";
import { Backoff, TRANSIENT_STATUS, retryAfterMs } from "./retry.js";
import { JobSession } from "./session.js";
import { readEvents } from "./sse.js";

/**
 * @typedef {import("./events.js").JobEvent} JobEvent
 * @typedef {import("./events.js").JobStatus} JobStatus
 * @typedef {import("./assembly.js").AssistantMessage} AssistantMessage
 * @typedef {import("./assembly.js").ToolCall} ToolCall
 * @typedef {import("./assembly.js").JobResult} JobResult
 */

/**
 * One job: its events, its text, its status; cancel it.
 *
 * A `Job` remembers where its stream stands (`lastSeq`): `events()` called again goes
 * on from there. Consume one stream of a job at a time.
 */
export class Job {
  /**
   * @param {import("./http.js").Client} client
   * @param {string} id
   * @param {{after?: number, listenToken?: string, useToken?: boolean}} [options]
   */
  constructor(client, id, { after = 0, listenToken, useToken = false } = {}) {
    if (!Number.isInteger(after) || after < 0) {
      throw new TypeError(`after must be a seq, a whole number >= 0, not ${after}`);
    }
    /** @type {import("./http.js").Client} */
    this.client = client;
    /** @type {string} */
    this.id = id;
    /** @type {string | null} A capability to follow this job only, to hand to a page (with keys on). */
    this.listenToken = listenToken ?? null;
    this._key = useToken ? listenToken : undefined;
    this._session = new JobSession(after);
  }

  /** @returns {number} The seq of the last event seen: a stream resumes after it. */
  get lastSeq() {
    return this._session.lastSeq;
  }

  set lastSeq(seq) {
    this._session.lastSeq = seq;
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
    if (this._session.ended) return;
    const backoff = new Backoff(this.client.retry);
    for (;;) {
      const failure = yield* this._stream(backoff);
      if (failure === null) return;
      if (backoff.exhausted) {
        throw new ConnectionLost(
          `lost the event stream of job ${this.id} and could not resume it for ` +
            `${Math.round(backoff.elapsed)} ms: ${describe(failure)}`,
          { cause: failure },
        );
      }
      await backoff.wait();
    }
  }

  /**
   * One stream of the job's events, from after `lastSeq`; each failure told to `backoff`.
   *
   * @param {Backoff} backoff
   * @returns {AsyncGenerator<JobEvent, unknown, undefined>} Returns null once the job's
   *   end was yielded, else why the stream stopped short.
   * @throws {ClientError} The server refused the stream, not for a while.
   */
  async *_stream(backoff) {
    const controller = new AbortController();
    let response;
    try {
      response = await this.client._send(
        "GET",
        `/v1/jobs/${encodeURIComponent(this.id)}/events?events=typed`,
        { key: this._key, headers: this._session.resumeHeaders(), signal: controller.signal },
      );
    } catch (error) {
      backoff.failed();
      return error;
    }
    if (response.status === 204) {
      // The job ended while we were away, and nothing follows what we saw.
      const status = await this.status();
      const end = this._session.endFromStatus(status);
      if (end !== null) {
        yield end;
        return null;
      }
      backoff.failed();
      return new Error(`204 for job ${this.id}, which is ${status.state}`);
    }
    if (!response.ok) {
      const error = await errorFrom(response);
      if (!TRANSIENT_STATUS.has(response.status)) throw error;
      backoff.failed(retryAfterMs(response));
      return error;
    }
    return yield* this._read(response, controller, backoff);
  }

  /**
   * The events of an open stream, to the job's end or to the stream's.
   *
   * @param {Response} response
   * @param {AbortController} controller
   * @param {Backoff} backoff
   * @returns {AsyncGenerator<JobEvent, unknown, undefined>} As `_stream`.
   */
  async *_read(response, controller, backoff) {
    const retry = this.client.retry;
    const openedAt = Date.now();
    let progressed = false;
    let failure;
    const messages = readEvents(response, controller, retry.idleTimeoutMs);
    try {
      for (;;) {
        let next;
        try {
          next = await messages.next();
        } catch (error) {
          failure = error;
          break;
        }
        if (next.done) {
          failure = new Error("the event stream ended before the job did");
          break;
        }
        const event = this._session.accept(next.value);
        if (event === null) continue;
        if (event.type !== "notice" || event.seq !== undefined) progressed = true;
        yield event;
        if (TERMINAL.has(event.type)) return null;
      }
    } finally {
      controller.abort();
      messages.return(undefined).catch(() => {});
    }
    // A stream that brought news of the job, or lasted, was no failure: count anew.
    if (progressed || Date.now() - openedAt >= retry.maxDelayMs) backoff.succeeded();
    backoff.failed();
    return failure;
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
    return this._session.answer.text;
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
    return this._session.message;
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
      // The session puts the answer together.
    }
    const end = this._session.end;
    if (end === null) throw new ClientError(`the events of job ${this.id} ended without its end`);
    if (end.type === "failed") throw new JobFailed(this.id, end.message);
    if (end.type === "cancelled") throw new JobCancelled(this.id);
    return end;
  }

  /** @returns {boolean} Whether the job's end has been seen. */
  get ended() {
    return this._session.ended;
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
    return decodeStatus(await response.json());
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
    const path = `/v1/jobs/${encodeURIComponent(this.id)}/cancel`;
    const response = await this.client._sendOnce("POST", path, { key: this._key });
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
    const backoff = new Backoff(this.client.retry, Date.now());
    for (;;) {
      try {
        const response = await this.client._send(method, path, { key: this._key });
        if (!TRANSIENT_STATUS.has(response.status)) return response;
        const error = await errorFrom(response);
        backoff.failed(retryAfterMs(response));
        if (backoff.exhausted) throw error;
      } catch (error) {
        if (error instanceof ClientError) throw error;
        backoff.failed();
        if (backoff.exhausted) throw this.client._unreachable(error);
      }
      await backoff.wait();
    }
  }
}
