// What the JavaScript client's test files share: scripted answers for its `fetch`,
// and a real worker to talk to (serve_for_js.py, started as a child process).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const ASSISTANT = {
  streams: [
    {
      provider: "openai",
      settings: { model: "gpt-4o-mini" },
      messages: [{ role: "user", content: "{query}" }],
    },
  ],
};
export const TEST_TIMEOUT = 60_000;

/** The text of the upstream's reply to "slow:N" or "tokens:N": " t0 t1 ... t(N-1)". */
export function tokens(count) {
  return Array.from({ length: count }, (_, i) => ` t${i}`).join("");
}

/** Gathers a job's events (or those of any async iterable) into an array. */
export async function collect(iterable) {
  const events = [];
  for await (const event of iterable) events.push(event);
  return events;
}

export function textOf(events) {
  return events
    .filter((e) => e.type === "text")
    .map((e) => e.text)
    .join("");
}

export function assertSeqsIncrease(events) {
  const seqs = events.filter((e) => typeof e.seq === "number").map((e) => e.seq);
  assert.ok(seqs.length > 0, "no event carried a seq");
  for (let i = 1; i < seqs.length; i++) {
    assert.ok(seqs[i] > seqs[i - 1], `seqs must grow, got ${seqs.join(",")}`);
  }
}

// -- scripted answers -----------------------------------------------------------

const encoder = new TextEncoder();

/** A body of `bytes` cut into chunks of `size` bytes (the last one shorter), then
 * closed, or errored with `fail`. */
export function bodyOf(text, { size = Infinity, fail } = {}) {
  const bytes = encoder.encode(text);
  const chunks = [];
  for (let i = 0; i < bytes.length; i += Math.min(size, bytes.length)) {
    chunks.push(bytes.slice(i, i + size));
  }
  let next = 0;
  return new ReadableStream({
    pull(controller) {
      if (next < chunks.length) controller.enqueue(chunks[next++]);
      else if (fail) controller.error(fail);
      else controller.close();
    },
  });
}

export function sse(text, options) {
  return new Response(bodyOf(text, options), {
    status: 200,
    headers: { "content-type": "text/event-stream" },
  });
}

export function json(status, body) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

export function frame(obj, newline = "\n") {
  const lines = [];
  if (typeof obj.seq === "number") lines.push(`id: ${obj.seq}`);
  lines.push(`event: ${obj.type}`, `data: ${JSON.stringify(obj)}`);
  return lines.join(newline) + newline + newline;
}

/**
 * A fetch answering from `script`, one entry per call: a function of (url, init)
 * returning a Response, or throwing. Records each call as {method, path, lastEventId}.
 */
export function scriptedFetch(script) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const headers = init.headers ?? {};
    const call = {
      method: init.method ?? "GET",
      path: new URL(url).pathname,
      lastEventId: headers["last-event-id"] ?? null,
      authorization: headers.authorization ?? null,
    };
    calls.push(call);
    const step = script[calls.length - 1];
    if (step === undefined) throw new Error(`unexpected request #${calls.length}: ${url}`);
    return step(call);
  };
  return { fetch, calls };
}

// -- a real worker ------------------------------------------------------------------

/** Starts serve_for_js.py; resolves with its URLs and a stop(). */
export async function startServers() {
  const python = process.env.PYTHON || ".venv/bin/python";
  const child = spawn(python, ["tests/js/serve_for_js.py"], {
    cwd: ROOT,
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (data) => {
    stderr = (stderr + data).slice(-20_000);
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const line = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once("line", resolve);
    child.once("error", (error) =>
      reject(new Error(`cannot start ${python} tests/js/serve_for_js.py: ${error.message}`)),
    );
    exited.then((code) =>
      reject(new Error(`serve_for_js.py exited (${code}) before it was ready:\n${stderr}`)),
    );
  });
  const urls = JSON.parse(line);
  return {
    ...urls,
    stderr: () => stderr,
    async stop() {
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
