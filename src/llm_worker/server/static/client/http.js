/**
 * A worker's HTTP API (`Client`): where it is, the key, the `fetch` and the retry
 * policy its jobs share; adding a job, and following one added earlier.
 *
 * @module llm-worker-client/http
 */

import { ConnectionLost, describe, errorFrom } from "./errors.js";
import { Job } from "./job.js";
import { retryPolicy } from "./retry.js";

/** A worker's HTTP API. */
export class Client {
  /**
   * @param {string | URL} [url] The worker's base URL (a path prefix is kept); in a
   *   browser, the page's origin by default.
   * @param {object} [options]
   * @param {string} [options.apiKey] Sent as `Authorization: Bearer KEY`.
   * @param {typeof fetch} [options.fetch] The `fetch` to use (the global one by default).
   * @param {import("./retry.js").RetryOptions | number} [options.retry] How dropped
   *   streams are resumed; a number is `giveUpAfterMs`.
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
    /** @type {Required<import("./retry.js").RetryOptions>} */
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
    const response = await this._sendOnce("POST", "/v1/jobs", { body });
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

  /**
   * A request that changes something, sent once: the server may have done it before
   * the connection failed, and sending it again could do it twice.
   *
   * @param {string} method
   * @param {string} path
   * @param {{body?: unknown, key?: string}} [options]
   * @returns {Promise<Response>}
   * @throws {ConnectionLost} No answer came.
   * @internal
   */
  async _sendOnce(method, path, options) {
    try {
      return await this._send(method, path, options);
    } catch (error) {
      throw this._unreachable(error);
    }
  }

  /**
   * @param {unknown} error Why a request got no answer.
   * @returns {ConnectionLost}
   * @internal
   */
  _unreachable(error) {
    return new ConnectionLost(`cannot reach ${this.url}: ${describe(error)}`, { cause: error });
  }
}
