// The browser client (src/llm_worker/server/static/client.js) against a real worker
// started by serve_for_js.py, through a TCP proxy the tests can order to cut every
// connection. Run by Node's test runner: node --test tests/js/

import assert from "node:assert/strict";
import { readFile, readdir } from "node:fs/promises";
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
  startServers,
  textOf,
  tokens,
} from "./support.mjs";

const STATIC = fileURLToPath(new URL("../../src/llm_worker/server/static/", import.meta.url));

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

  test("the worker serves this very module at /client.js, and its modules", { timeout: TEST_TIMEOUT }, async () => {
    const modules = (await readdir(`${STATIC}client`)).filter((name) => name.endsWith(".js"));
    assert.ok(modules.length > 0);
    for (const name of ["client.js", ...modules.map((module) => `client/${module}`)]) {
      const response = await fetch(`${servers.direct}/${name}`);
      assert.equal(response.status, 200, name);
      assert.match(response.headers.get("content-type") ?? "", /javascript/);
      const served = Buffer.from(await response.arrayBuffer());
      assert.ok(served.equals(await readFile(STATIC + name)), `the served ${name} differs from the file`);
    }
  });
});
