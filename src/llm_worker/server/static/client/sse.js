/**
 * Server-Sent Events: the parser (`EventStreamParser`, text in, events out, no I/O)
 * and the reader of a response body through it (`readEvents`).
 *
 * @module llm-worker-client/sse
 */

/** @typedef {{event: string, data: string, id: string | null}} ServerSentEvent */

/**
 * The events of an SSE stream, parsed as the HTML standard says: lines end with CRLF,
 * LF or CR (wherever the chunks split), `:` starts a comment, `data:` lines join with
 * newlines, a blank line ends an event. An event without its blank line at the end of
 * the stream is incomplete: dropped.
 */
export class EventStreamParser {
  constructor() {
    this.buffer = "";
    /** @type {string[]} */
    this.data = [];
    this.hasData = false;
    this.event = "";
    /** @type {string | null} The last event id, kept from event to event. */
    this.id = null;
  }

  /**
   * Takes in the next piece of the stream's text.
   *
   * @param {string} text
   * @param {boolean} [done] Whether the stream ends after it.
   * @returns {ServerSentEvent[]} The events it completes.
   */
  feed(text, done = false) {
    this.buffer += text;
    const buffer = this.buffer;
    const events = [];
    let start = 0;
    for (;;) {
      const end = lineEnd(buffer, start);
      if (end === -1) break;
      let next = end + 1;
      if (buffer.charCodeAt(end) === 13) {
        // A CR at the end of what came so far may be the first half of a CRLF.
        if (next === buffer.length && !done) break;
        if (buffer.charCodeAt(next) === 10) next += 1;
      }
      const event = this._line(buffer.slice(start, end));
      start = next;
      if (event !== null) events.push(event);
    }
    this.buffer = buffer.slice(start);
    return events;
  }

  /**
   * @param {string} line
   * @returns {ServerSentEvent | null} The event a blank line ends.
   */
  _line(line) {
    if (line === "") {
      const event = this.hasData
        ? { event: this.event || "message", data: this.data.join("\n"), id: this.id }
        : null;
      this.data = [];
      this.hasData = false;
      this.event = "";
      return event;
    }
    if (line.charCodeAt(0) === 58) return null; // ":" a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") {
      this.data.push(value);
      this.hasData = true;
    } else if (field === "event") {
      this.event = value;
    } else if (field === "id") {
      if (!value.includes("\0")) this.id = value;
    }
    // "retry" and unknown fields: nothing this client needs.
    return null;
  }
}

/**
 * @param {string} text
 * @param {number} from
 * @returns {number} The index of the first CR or LF at or after `from`, or -1.
 */
function lineEnd(text, from) {
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10 || c === 13) return i;
  }
  return -1;
}

/**
 * The events of an SSE response body, as they come.
 *
 * @param {Response} response
 * @param {AbortController} controller Aborted when nothing comes for `idleMs`.
 * @param {number} idleMs
 * @returns {AsyncGenerator<ServerSentEvent>}
 */
export async function* readEvents(response, controller, idleMs) {
  if (response.body === null) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new EventStreamParser();
  let timer = null;
  const arm = () => {
    if (timer !== null) clearTimeout(timer);
    if (idleMs > 0 && Number.isFinite(idleMs)) {
      timer = setTimeout(() => controller.abort(new Error(`nothing came for ${idleMs} ms`)), idleMs);
    }
  };
  try {
    arm();
    for (;;) {
      const { done, value } = await reader.read();
      arm();
      yield* parser.feed(done ? decoder.decode() : decoder.decode(value, { stream: true }), done);
      if (done) return;
    }
  } finally {
    if (timer !== null) clearTimeout(timer);
    reader.cancel().catch(() => {});
  }
}
