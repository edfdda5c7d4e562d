/**
 * The events of a job as the client yields them, and the answer to its status: the
 * frames of the stream decoded into events (`decodeEvent`), a status body into a
 * `JobStatus` (`decodeStatus`), and the end a status stands for (`endFromStatus`).
 * Pure: no I/O, no state.
 *
 * @module llm-worker-client/events
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
 *      providers: (string | null)[] | null,
 *      message: import("./assembly.js").AssistantMessage | null}
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
 * @property {import("./assembly.js").AssistantMessage | null} message When done: the
 *   finished assistant message (null from a server without typed events).
 */

/** The types of a job's last event. */
export const TERMINAL = new Set(["done", "failed", "cancelled"]);

/**
 * The event of a frame of a job's log (any but `pending` and `error`, which say
 * nothing of the log), or null for a frame to skip (of a type this client does not
 * know yet, or a tool call's fragment without its index).
 *
 * @param {string} type
 * @param {Record<string, any>} frame
 * @param {number | null} seq
 * @returns {JobEvent | null}
 */
export function decodeEvent(type, frame, seq) {
  switch (type) {
    case "running":
      if (!frame.message) return { type: "started", seq };
      return { type: "text", text: frame.message, seq };
    case "reasoning":
    case "refusal":
      return { type, text: String(frame.message ?? ""), seq };
    case "tool_call":
      return toolCallEvent(frame, seq);
    case "notice":
      return { type: "notice", message: String(frame.message ?? ""), seq };
    case "reset":
      return { type: "reset", attempt: frame.attempt, seq };
    case "done":
      return { type: "done", seq, ...outcome(frame) };
    case "failed":
      return { type: "failed", message: String(frame.message ?? ""), seq };
    case "cancelled":
      return { type: "cancelled", seq };
    default:
      return null; // a type this client does not know yet
  }
}

/**
 * @param {Record<string, unknown>} frame
 * @param {number | null} seq
 * @returns {JobEvent | null} null for a frame without its index.
 */
function toolCallEvent(frame, seq) {
  const index = frame.index;
  if (typeof index !== "number" || !Number.isInteger(index)) return null; // not a fragment
  const id = typeof frame.id === "string" ? frame.id : null;
  const name = typeof frame.name === "string" ? frame.name : null;
  const args = typeof frame.arguments === "string" ? frame.arguments : "";
  return { type: "tool_call", index, id, name, arguments: args, seq };
}

/**
 * @param {Record<string, any>} body The JSON of `GET /v1/jobs/{id}`.
 * @returns {JobStatus}
 */
export function decodeStatus(body) {
  return {
    state: body.state,
    position: typeof body.position === "number" ? body.position : null,
    output: typeof body.output === "string" ? body.output : "",
    error: typeof body.error === "string" ? body.error : null,
    ...outcome(body),
  };
}

/**
 * The terminal event of a job that ended while its stream was away.
 *
 * @param {JobStatus} status
 * @param {number} seq The last seq seen.
 * @returns {JobEvent | null} null if it has not ended.
 */
export function endFromStatus(status, seq) {
  switch (status.state) {
    case "done": {
      const { usage, finishReason, providers, message } = status;
      return { type: "done", seq, usage, finishReason, providers, message };
    }
    case "failed":
      return { type: "failed", message: String(status.error ?? ""), seq };
    case "cancelled":
      return { type: "cancelled", seq };
    default:
      return null;
  }
}

/**
 * What a done job's frame or status says of its outcome.
 *
 * @param {Record<string, any>} body
 */
function outcome(body) {
  return {
    usage: body.usage ?? null,
    finishReason: body.finish_reason ?? null,
    providers: body.providers ?? null,
    message: isObject(body.message) ? body.message : null,
  };
}

/** @param {unknown} value @returns {value is Record<string, unknown>} */
function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}
