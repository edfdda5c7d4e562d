/**
 * Where the stream of one job stands, with no I/O: a sans-I/O session. The rules of
 * the protocol are here, each testable by feeding it frames:
 *
 * - Order. Each event of the job's log passes once (`lastSeq`): a resumed stream
 *   overlapping what came before is dropped to where it left off, and asks to resume
 *   after it (`resumeHeaders()`: `Last-Event-ID`). An end passes even so, once.
 * - The queue. `pending` passes only when the position moves.
 * - The answer. Its events are put together as they pass (`Assembly`); a `reset`
 *   voids it; once done, the message the server sent with `done` is the answer.
 * - Versions. Frames of a type this client does not know (from a newer server) are
 *   skipped; a server without typed events sends text only, the message is then put
 *   together from it.
 *
 * @module llm-worker-client/session
 */

import { Assembly } from "./assembly.js";
import { TERMINAL, decodeEvent, endFromStatus } from "./events.js";

/** @typedef {import("./events.js").JobEvent} JobEvent */

export class JobSession {
  /** @param {number} [after] The seq to start after: its events come next. */
  constructor(after = 0) {
    /** @type {number} The seq of the last event seen: a stream resumes after it. */
    this.lastSeq = after;
    /** @type {Assembly} The answer of the current attempt, so far. */
    this.answer = new Assembly();
    /** @type {JobEvent | null} The job's end, once seen. */
    this.end = null;
    /** @type {number | undefined} The last queue position passed on. */
    this.position = undefined;
  }

  /** @returns {boolean} Whether the job's end has been seen. */
  get ended() {
    return this.end !== null;
  }

  /** @returns {Record<string, string>} The headers of a request for the job's stream. */
  resumeHeaders() {
    /** @type {Record<string, string>} */
    const headers = { accept: "text/event-stream" };
    if (this.lastSeq > 0) headers["last-event-id"] = String(this.lastSeq);
    return headers;
  }

  /**
   * The event of a frame, or null for a frame to skip (seen already, or unknown).
   *
   * @param {{event: string, data: string, id: string | null}} message A server-sent event.
   * @returns {JobEvent | null}
   */
  accept(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return null;
    }
    if (frame === null || typeof frame !== "object") return null;
    const type = frame.type ?? message.event;
    if (type === "pending") {
      if (frame.position === this.position) return null;
      this.position = frame.position;
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
    if (type === "running") this.position = undefined;
    const event = decodeEvent(type, frame, seq);
    if (event === null) return null;
    if (event.type === "reset") this.answer = new Assembly();
    else if (TERMINAL.has(event.type)) this.end = event;
    else this.answer.take(event);
    return event;
  }

  /**
   * The terminal event of a job that ended while the stream was away.
   *
   * @param {import("./events.js").JobStatus} status
   * @returns {JobEvent | null} null if it has not ended.
   */
  endFromStatus(status) {
    const end = endFromStatus(status, this.lastSeq);
    if (end !== null) this.end = end;
    return end;
  }

  /**
   * The assistant message of the events seen so far (text, reasoning, refusal, tool
   * calls in progress; a `reset` voids them); once done, the one the server sent with
   * `done`, whole even if the job was followed from a later seq.
   *
   * @returns {import("./assembly.js").AssistantMessage}
   */
  get message() {
    const end = this.end;
    if (end !== null && end.type === "done" && end.message) return end.message;
    return this.answer.message();
  }
}
