/**
 * LLM Worker client: add jobs and stream their text over the HTTP API, from a
 * browser or from Node >= 18. ES modules, no dependencies; they need only
 * `fetch`, `ReadableStream`, `TextDecoder` and `AbortController`.
 *
 * The worker serves this file at `/client.js`, and the modules it imports beside it:
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
 * The modules of `client/` (served at `/client/{name}.js`), one concept each:
 * `session.js` (a job's stream with no I/O: the protocol's rules), `events.js` (frames
 * and statuses decoded), `assembly.js` (the answer put together from its events),
 * `sse.js` (Server-Sent Events), `retry.js` (back-off), `errors.js`, and the HTTP
 * shell: `http.js` (`Client`) and `job.js` (`Job`). Import this one: it is the API.
 *
 * @module llm-worker-client
 */

export {
  ClientError,
  ConnectionLost,
  JobCancelled,
  JobFailed,
  JobNotFound,
  RequestRefused,
} from "./client/errors.js";
export { Client } from "./client/http.js";
export { Job } from "./client/job.js";

/**
 * @typedef {import("./client/retry.js").RetryOptions} RetryOptions
 * @typedef {import("./client/events.js").JobEvent} JobEvent
 * @typedef {import("./client/events.js").JobStatus} JobStatus
 * @typedef {import("./client/assembly.js").AssistantMessage} AssistantMessage
 * @typedef {import("./client/assembly.js").ToolCall} ToolCall
 * @typedef {import("./client/assembly.js").JobResult} JobResult
 */
