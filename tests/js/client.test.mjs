// The browser client (src/llm_worker/server/static/client.js), run by Node's test runner:
//
//     node --test tests/js/            (PYTHON=... picks the interpreter, .venv/bin/python by default)
//
// These tests feed the client scripted answers through its `fetch` option (the SSE
// parser, reconnection, back-off); worker.test.mjs runs it against a real worker.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  Client,
  ClientError,
  ConnectionLost,
  JobCancelled,
  JobFailed,
  JobNotFound,
  RequestRefused,
} from "../../src/llm_worker/server/static/client.js";

import { collect, frame, json, scriptedFetch, sse } from "./support.mjs";

describe("the client, on scripted answers", () => {
  const J = "job-1";
  const stream = [
    ": a comment first\n\n",
    'retry: 100\nevent: pending\ndata: {"type":"pending","job_id":"job-1","position":2}\n\n',
    frame({ type: "running", job_id: J, message: "", seq: 1 }, "\r\n"),
    // One event whose JSON spans two data lines (joined with a newline, still JSON).
    'id: 2\nevent: running\ndata: {"type":"running","job_id":"job-1",\ndata: "message":"Héllo ✓ 🎉","seq":2}\n\n',
    ": keep-alive\r\r",
    frame({ type: "error", message: "the job store is unreachable" }, "\r"),
    frame({ type: "notice", job_id: J, message: "loading local model 'm'", seq: 3 }),
    frame({ type: "running", job_id: J, message: " wörld", seq: 4 }),
    frame({ type: "a-type-from-the-future", job_id: J, seq: 5 }),
    frame({ type: "done", job_id: J, seq: 6 }, "\r\n"),
  ].join("");
  const expected = [
    { type: "pending", position: 2 },
    { type: "started", seq: 1 },
    { type: "text", text: "Héllo ✓ 🎉", seq: 2 },
    { type: "notice", message: "the job store is unreachable" },
    { type: "notice", message: "loading local model 'm'", seq: 3 },
    { type: "text", text: " wörld", seq: 4 },
    { type: "done", seq: 6, usage: null, finishReason: null, providers: null, message: null },
  ];

  for (const size of [1, 2, 3, 5, 7, 64, Infinity]) {
    test(`parses events split into chunks of ${size} bytes`, async () => {
      const { fetch, calls } = scriptedFetch([() => sse(stream, { size })]);
      const client = new Client("http://worker.test/prefix/", { fetch, apiKey: "k1" });
      const job = client.job(J);
      assert.deepEqual(await collect(job), expected);
      assert.equal(job.lastSeq, 6);
      assert.ok(job.ended);
      assert.deepEqual(calls, [
        {
          method: "GET",
          path: "/prefix/v1/jobs/job-1/events",
          lastEventId: null,
          authorization: "Bearer k1",
        },
      ]);
    });
  }

  test("resumes after the last seq, drops what it saw, and ends from the status on 204", async () => {
    const { fetch, calls } = scriptedFetch([
      // The first stream ends early, without its end.
      () =>
        sse(
          frame({ type: "running", job_id: J, message: "", seq: 1 }) +
            frame({ type: "running", job_id: J, message: "a", seq: 2 }) +
            frame({ type: "running", job_id: J, message: "b", seq: 3 }),
          { size: 10 },
        ),
      // The second repeats seqs 2 and 3, brings 4 and 5 merged, then the network fails.
      () =>
        sse(
          frame({ type: "running", job_id: J, message: "a", seq: 2 }) +
            frame({ type: "running", job_id: J, message: "b", seq: 3 }) +
            frame({ type: "running", job_id: J, message: "cd", seq: 5 }),
          { size: 4, fail: new TypeError("terminated") },
        ),
      () => {
        throw new TypeError("fetch failed");
      },
      () => json(503, { type: "error", message: "the job store is unreachable" }),
      () => new Response(null, { status: 204 }),
      () => json(200, { type: "status", job_id: J, state: "done", output: "abcd" }),
    ]);
    const client = new Client("http://worker.test", { fetch, retry: { initialDelayMs: 1 } });
    const job = client.job(J);
    const events = await collect(job);
    assert.deepEqual(events, [
      { type: "started", seq: 1 },
      { type: "text", text: "a", seq: 2 },
      { type: "text", text: "b", seq: 3 },
      { type: "text", text: "cd", seq: 5 },
      { type: "done", seq: 5, usage: null, finishReason: null, providers: null, message: null },
    ]);
    assert.deepEqual(
      calls.map((c) => [c.path, c.lastEventId]),
      [
        ["/v1/jobs/job-1/events", null],
        ["/v1/jobs/job-1/events", "3"],
        ["/v1/jobs/job-1/events", "5"],
        ["/v1/jobs/job-1/events", "5"],
        ["/v1/jobs/job-1/events", "5"],
        ["/v1/jobs/job-1", null],
      ],
    );
    assert.equal(await job.text(), "abcd");
  });

  test("a reset voids the text gathered so far", async () => {
    const rest =
      frame({ type: "reset", job_id: J, attempt: 2, seq: 3 }) +
      frame({ type: "running", job_id: J, message: "", seq: 4 }) +
      frame({ type: "running", job_id: J, message: "kept text", seq: 5 }) +
      frame({ type: "done", job_id: J, seq: 6 });
    const { fetch, calls } = scriptedFetch([
      () =>
        sse(
          frame({ type: "running", job_id: J, message: "", seq: 1 }) +
            frame({ type: "running", job_id: J, message: "lost text", seq: 2 }) +
            rest,
        ),
      () => sse(rest),
    ]);
    const job = new Client("http://worker.test", { fetch }).job(J);
    const events = [];
    const iterator = job.events();
    events.push((await iterator.next()).value, (await iterator.next()).value);
    assert.deepEqual(events, [
      { type: "started", seq: 1 },
      { type: "text", text: "lost text", seq: 2 },
    ]);
    // text() goes on where the iteration stopped, and keeps only the last attempt's text.
    await iterator.return();
    assert.equal(await job.text(), "kept text");
    assert.deepEqual(
      calls.map((c) => c.lastEventId),
      [null, "2"],
    );
  });

  test("text() rejects with JobFailed or JobCancelled", async () => {
    const failing = scriptedFetch([
      () => sse(frame({ type: "failed", job_id: J, message: "upstream said no", seq: 2 })),
    ]);
    await assert.rejects(new Client("http://w.test", failing).job(J).text(), (error) => {
      assert.ok(error instanceof JobFailed && error instanceof ClientError);
      assert.equal(error.message, "upstream said no");
      assert.equal(error.jobId, J);
      return true;
    });
    const cancelled = scriptedFetch([() => sse(frame({ type: "cancelled", job_id: J, seq: 2 }))]);
    await assert.rejects(new Client("http://w.test", cancelled).job(J).text(), JobCancelled);
  });

  test("gives up with ConnectionLost after retry.giveUpAfterMs, backing off meanwhile", async () => {
    const failure = new TypeError("fetch failed");
    const script = Array.from({ length: 1000 }, () => () => {
      throw failure;
    });
    const { fetch, calls } = scriptedFetch(script);
    const client = new Client("http://w.test", {
      fetch,
      retry: { initialDelayMs: 50, maxDelayMs: 2000, giveUpAfterMs: 300 },
    });
    const started = Date.now();
    await assert.rejects(client.job(J).text(), (error) => {
      assert.ok(error instanceof ConnectionLost, `${error}`);
      assert.equal(error.cause, failure);
      return true;
    });
    assert.ok(Date.now() - started >= 300, "gave up too early");
    // 50 + 100 + 200 ms of waits fit in 300 ms only partly: a handful of attempts, not hundreds.
    assert.ok(calls.length >= 2 && calls.length <= 6, `${calls.length} attempts`);
  });

  test("a refusal of the stream is not retried", async () => {
    const { fetch, calls } = scriptedFetch([
      () => json(401, { type: "error", message: "an API key is needed" }),
    ]);
    await assert.rejects(new Client("http://w.test", { fetch }).job(J).text(), (error) => {
      assert.ok(error instanceof RequestRefused && !(error instanceof JobNotFound));
      assert.equal(error.status, 401);
      assert.equal(error.message, "an API key is needed");
      return true;
    });
    assert.equal(calls.length, 1);
  });

  test("a refusal is known by its code; by its status only without one", async () => {
    const { fetch } = scriptedFetch([
      () => json(404, { type: "error", code: "job_not_found", message: "unknown job" }),
      () => json(404, { type: "error", code: "not_found", message: "no such route" }),
      () => json(404, { type: "error", message: "unknown job (a server from before codes)" }),
      () => json(429, { type: "error", code: "tenant_queue_full", message: "too many jobs" }),
    ]);
    const client = new Client("http://w.test", { fetch, retry: { giveUpAfterMs: 0 } });
    const refusals = [];
    for (let i = 0; i < 4; i++) {
      await assert.rejects(client.job(J).status(), (error) => {
        refusals.push(error);
        return error instanceof RequestRefused;
      });
    }
    assert.deepEqual(
      refusals.map((e) => [e instanceof JobNotFound, e.code, e.status]),
      [
        [true, "job_not_found", 404],
        [false, "not_found", 404],
        [true, undefined, 404],
        [false, "tenant_queue_full", 429],
      ],
    );
  });

  test("a listen token given to job() is the key of that job", async () => {
    const { fetch, calls } = scriptedFetch([
      () => sse(frame({ type: "done", job_id: J, seq: 3 })),
      () => json(200, { type: "status", job_id: J, state: "done", output: "x" }),
    ]);
    const client = new Client("http://w.test", { fetch, apiKey: "backend-key" });
    const job = client.job(J, { listenToken: "lt1.token", after: 2 });
    assert.equal(job.listenToken, "lt1.token");
    assert.equal(job.lastSeq, 2);
    await collect(job);
    assert.deepEqual(await job.status(), {
      state: "done",
      position: null,
      output: "x",
      error: null,
      usage: null,
      finishReason: null,
      providers: null,
      message: null,
    });
    assert.deepEqual(
      calls.map((c) => [c.lastEventId, c.authorization]),
      [
        ["2", "Bearer lt1.token"],
        [null, "Bearer lt1.token"],
      ],
    );
  });
});
