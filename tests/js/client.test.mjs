// The browser client (src/llm_worker/server/static/client.js), run by Node's test runner:
//
//     node --test tests/js/            (PYTHON=... picks the interpreter, .venv/bin/python by default)
//
// The first tests feed the client scripted answers through its `fetch` option (the SSE
// parser, reconnection, back-off); the others talk to a real worker started by
// serve_for_js.py, through a TCP proxy the tests can order to cut every connection.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  Client,
  ClientError,
  ConnectionLost,
  Job,
  JobCancelled,
  JobFailed,
  JobNotFound,
  RequestRefused,
} from "../../src/llm_worker/server/static/client.js";

import {
  ASSISTANT,
  TEST_TIMEOUT,
  assertSeqsIncrease,
  collect,
  frame,
  json,
  scriptedFetch,
  sse,
  startServers,
  textOf,
  tokens,
} from "./support.mjs";

const CLIENT_FILE = fileURLToPath(new URL("../../src/llm_worker/server/static/client.js", import.meta.url));

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

// -- against a real worker ---------------------------------------------------------

describe("the client, against a worker", { timeout: 5 * TEST_TIMEOUT }, () => {
  let servers;
  let client; // straight to the worker
  let proxied; // through the proxy that can cut connections

  async function control(path, method = "POST") {
    const response = await fetch(servers.control + path, { method });
    assert.equal(response.status, 200, `control ${path}`);
    return await response.json();
  }

  before(
    async () => {
      servers = await startServers();
      client = new Client(servers.direct);
      proxied = new Client(servers.url, { retry: { giveUpAfterMs: 20_000 } });
    },
    { timeout: TEST_TIMEOUT },
  );

  after(async () => {
    await servers?.stop();
  });

  test("submit, then stream the text", { timeout: TEST_TIMEOUT }, async () => {
    const job = await client.submit("hello brave new world", ASSISTANT);
    assert.ok(job instanceof Job);
    assert.equal(typeof job.id, "string");
    assert.ok(job.id.length > 0);
    const events = await collect(job);
    const started = events.findIndex((e) => e.type === "started");
    const firstText = events.findIndex((e) => e.type === "text");
    assert.ok(started >= 0 && started < firstText, JSON.stringify(events));
    assert.equal(textOf(events), "hello brave new world");
    assertSeqsIncrease(events);
    const end = events.at(-1);
    assert.equal(end.type, "done");
    assert.equal(end.finishReason, "stop");
    assert.equal(end.usage.completion_tokens, 4);
    assert.equal(end.usage.total_tokens, end.usage.prompt_tokens + 4);
    assert.equal(job.lastSeq, end.seq);
    assert.ok(job.ended);
    for (const event of events.slice(0, -1)) {
      assert.ok(!["done", "failed", "cancelled"].includes(event.type));
    }
  });

  test("text() gives the whole answer", { timeout: TEST_TIMEOUT }, async () => {
    const job = await client.submit("tokens:300", ASSISTANT);
    assert.equal(await job.text(), tokens(300));
    // Once ended, text() answers again without asking the server.
    assert.equal(await job.text(), tokens(300));
  });

  test("status of a done job and of a failed one", { timeout: TEST_TIMEOUT }, async () => {
    const done = await client.submit("tokens:12", ASSISTANT);
    assert.equal(await done.text(), tokens(12));
    const doneStatus = await done.status();
    assert.equal(doneStatus.usage.completion_tokens, 12);
    assert.deepEqual(doneStatus, {
      state: "done",
      position: null,
      output: tokens(12),
      error: null,
      usage: doneStatus.usage,
      finishReason: "stop",
      providers: ["openai"],
      message: { role: "assistant", content: tokens(12) },
    });
    // Too late to cancel: refused with 409.
    await assert.rejects(done.cancel(), (error) => {
      assert.ok(error instanceof RequestRefused && !(error instanceof JobNotFound), `${error}`);
      assert.equal(error.status, 409);
      assert.match(error.message, /already ended/);
      return true;
    });

    const failing = await client.submit("fail", ASSISTANT);
    await assert.rejects(failing.text(), (error) => {
      assert.ok(error instanceof JobFailed, `${error}`);
      assert.match(error.message, /told to fail/);
      return true;
    });
    const status = await failing.status();
    assert.equal(status.state, "failed");
    assert.match(status.error, /told to fail/);
  });

  test("cancel a slow job", { timeout: TEST_TIMEOUT }, async () => {
    const job = await client.submit("slow:400", ASSISTANT);
    const events = [];
    for await (const event of job) {
      events.push(event);
      if (event.type === "text" && events.filter((e) => e.type === "text").length === 1) {
        await job.cancel();
      }
    }
    const end = events.at(-1);
    assert.equal(end.type, "cancelled", JSON.stringify(events));
    assertSeqsIncrease(events);
    // A few tokens at most, far from the 400 of the whole reply.
    assert.ok(textOf(events).length < tokens(400).length / 2);
    await assert.rejects(job.text(), JobCancelled);
    // Another listener replays the job to the same end.
    await assert.rejects(client.job(job.id).text(), JobCancelled);
    assert.equal((await job.status()).state, "cancelled");
  });

  test("client.job(id, {after}) resumes from the middle", { timeout: TEST_TIMEOUT }, async () => {
    // Tokens 50 ms apart come in frames of their own (a burst may be merged into one).
    const job = await client.submit("slow:16", ASSISTANT);
    const full = await collect(job);
    assert.equal(textOf(full), tokens(16));
    const texts = full.filter((e) => e.type === "text");
    assert.ok(texts.length >= 2, "the job's text came in one frame: nothing to resume within");
    const middle = texts[Math.floor(texts.length / 2) - 1];
    const head = full.slice(0, full.indexOf(middle) + 1);

    const resumed = client.job(job.id, { after: middle.seq });
    assert.equal(resumed.lastSeq, middle.seq);
    const rest = await collect(resumed);
    assert.ok(rest.every((e) => e.seq > middle.seq), JSON.stringify(rest));
    assertSeqsIncrease(rest);
    assert.equal(textOf(head) + textOf(rest), tokens(16));
    assert.deepEqual(rest.at(-1), full.at(-1));
    assert.equal(await client.job(job.id, { after: middle.seq }).text(), textOf(rest));

    // After its end there is nothing more (204): the end, from the job's status.
    const end = full.at(-1);
    assert.deepEqual(end.message, { role: "assistant", content: tokens(16) });
    assert.deepEqual(await collect(client.job(job.id, { after: end.seq })), [
      {
        type: "done",
        seq: end.seq,
        usage: end.usage,
        finishReason: "stop",
        providers: ["openai"],
        message: end.message,
      },
    ]);
  });

  test("connections cut mid-stream: every delta once", { timeout: TEST_TIMEOUT }, async () => {
    const earlier = await control("/stats", "GET");
    const job = await proxied.submit("slow:80", ASSISTANT);
    const events = [];
    const cuts = [];
    let text = "";
    for await (const event of job) {
      events.push(event);
      if (event.type !== "text") continue;
      text += event.text;
      const seen = text.match(/ t\d+/g).length;
      // Cut after 10, 20 and 30 tokens: the reply has 80, 50 ms apart.
      if (cuts.length < 3 && seen >= 10 * (cuts.length + 1)) {
        cuts.push((await control("/cut")).cut);
      }
    }
    assert.equal(cuts.length, 3);
    for (const cut of cuts) assert.ok(cut >= 1, `a cut found no connection: ${cuts}`);
    assert.equal(events.at(-1).type, "done", JSON.stringify(events.at(-1)));
    assert.equal(textOf(events), tokens(80));
    assertSeqsIncrease(events);
    assert.equal(events.filter((e) => e.type === "started").length, 1);
    const stats = await control("/stats", "GET");
    // The stream, then one new connection after each cut (at least).
    assert.ok(stats.accepted - earlier.accepted >= 4, JSON.stringify({ earlier, stats }));
  });

  test("ConnectionLost when the worker stays away; resumable after", { timeout: TEST_TIMEOUT }, async () => {
    const submitted = await client.submit("slow:400", ASSISTANT);
    const impatient = new Client(servers.url, {
      retry: { initialDelayMs: 20, maxDelayMs: 100, giveUpAfterMs: 500 },
    });
    const job = impatient.job(submitted.id);
    const first = [];
    const events = job.events();
    try {
      for (;;) {
        const { value } = await events.next();
        first.push(value);
        if (value.type === "text") break;
      }
      await control("/block");
      assert.ok((await control("/cut")).cut >= 1);
      await assert.rejects(
        (async () => {
          for (;;) {
            const { value, done } = await events.next();
            if (done) break;
            first.push(value);
          }
        })(),
        (error) => {
          assert.ok(error instanceof ConnectionLost, `${error}`);
          return true;
        },
      );
      assert.ok((await control("/stats", "GET")).dropped >= 1, "no reconnection was tried");
    } finally {
      await control("/unblock");
    }
    assert.ok(!job.ended);
    await submitted.cancel();
    // The same job goes on from where it stood.
    const second = await collect(job);
    assert.equal(second.at(-1).type, "cancelled");
    const all = [...first, ...second];
    assertSeqsIncrease(all);
    const text = textOf(all);
    const count = text.match(/ t\d+/g).length;
    assert.equal(text, tokens(count));
  });

  test("a job waiting for its local model to load says so before its text", {
    timeout: TEST_TIMEOUT,
    skip: process.env.LOCAL_MODELS?.startsWith("tiny=")
      ? false
      : "LOCAL_MODELS does not offer the tiny local model (tiny=its directory)",
  }, async () => {
    const model = "tiny";
    const assistant = {
      streams: [
        {
          provider: "local",
          settings: { model, temperature: 0, max_tokens: 8 },
          messages: [{ role: "user", content: "{query}" }],
        },
      ],
    };
    const events = await collect(await client.submit("hi", assistant));
    const notices = events.filter((e) => e.type === "notice");
    assert.deepEqual(notices, [
      {
        type: "notice",
        message: `loading local model '${model}': the answer starts once it is loaded`,
        seq: 2,
      },
    ]);
    const firstText = events.findIndex((e) => e.type === "text");
    assert.ok(events.indexOf(notices[0]) < firstText, JSON.stringify(events));
    assertSeqsIncrease(events);
    assert.equal(events.at(-1).type, "done");
  });

  test("an unknown job: JobNotFound", { timeout: TEST_TIMEOUT }, async () => {
    const job = client.job("no-such-job");
    for (const attempt of [() => collect(job), () => job.status(), () => job.cancel()]) {
      await assert.rejects(attempt(), (error) => {
        assert.ok(error instanceof JobNotFound, `${error}`);
        assert.ok(error instanceof RequestRefused && error instanceof ClientError);
        assert.equal(error.status, 404);
        assert.equal(error.code, "job_not_found");
        assert.ok(error.message.length > 0);
        return true;
      });
    }
  });

  test("a bad template: RequestRefused with the server's reason", { timeout: TEST_TIMEOUT }, async () => {
    const assistant = structuredClone(ASSISTANT);
    assistant.streams[0].provider = "opena1";
    await assert.rejects(client.submit("hello", assistant), (error) => {
      assert.ok(error instanceof RequestRefused, `${error}`);
      assert.ok(!(error instanceof JobNotFound));
      assert.equal(error.status, 400);
      assert.match(error.message, /unknown provider 'opena1'/);
      assert.equal(error.body.type, "error");
      return true;
    });
  });

  test("the worker serves this very module at /client.js", { timeout: TEST_TIMEOUT }, async (t) => {
    const response = await fetch(`${servers.direct}/client.js`);
    if (response.status === 404) {
      await response.body?.cancel();
      t.skip("the worker answers 404 for /client.js: its route is not there yet");
      return;
    }
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /javascript/);
    const served = Buffer.from(await response.arrayBuffer());
    const file = await readFile(CLIENT_FILE);
    assert.ok(served.equals(file), "the served module differs from the file");
  });
});
