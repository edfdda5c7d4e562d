// The client's pure parts, without a network: the SSE parser, the session of a job's
// stream (its protocol rules), the back-off; and the entry point's API.
//
//     node --test tests/js/

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Backoff, retryPolicy } from "../../src/llm_worker/server/static/client/retry.js";
import { JobSession } from "../../src/llm_worker/server/static/client/session.js";
import { EventStreamParser } from "../../src/llm_worker/server/static/client/sse.js";

const STATIC = "../../src/llm_worker/server/static/";

/** A server-sent event carrying `frame` as its data. */
function message(frame, event = "message") {
  return { event, data: JSON.stringify(frame), id: null };
}

test("client.js exports the API it always did", async () => {
  const client = await import(`${STATIC}client.js`);
  assert.deepEqual(Object.keys(client).sort(), [
    "Client",
    "ClientError",
    "ConnectionLost",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "RequestRefused",
  ]);
  assert.equal(new client.JobNotFound("x").name, "JobNotFound");
  assert.ok(new client.JobNotFound("x") instanceof client.RequestRefused);
});

describe("EventStreamParser", () => {
  const stream =
    ': comment\r\nid: 7\r\nevent: running\ndata: {"a":\ndata: 1}\r\rdata: é\n\nretry: 5\ndata: x';
  const expected = [
    { event: "running", data: '{"a":\n1}', id: "7" },
    { event: "message", data: "é", id: "7" },
  ];

  test("the same events wherever the text is cut (a CRLF split too)", () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const parser = new EventStreamParser();
      const events = [...parser.feed(stream.slice(0, cut)), ...parser.feed(stream.slice(cut), true)];
      assert.deepEqual(events, expected, `cut at ${cut}`);
    }
  });

  test("a CR at the end of a piece waits for the next one, unless the stream ends", () => {
    const parser = new EventStreamParser();
    assert.deepEqual(parser.feed("data: a\r\r"), []);
    assert.deepEqual(parser.feed("\n"), [{ event: "message", data: "a", id: null }]);
    assert.deepEqual(new EventStreamParser().feed("data: b\r\r", true), [
      { event: "message", data: "b", id: null },
    ]);
  });

  test("an id with a NUL is ignored", () => {
    const events = new EventStreamParser().feed("id: 1\n\nid: 2\0\ndata: z\n\n");
    assert.deepEqual(events, [{ event: "message", data: "z", id: "1" }]);
  });
});

describe("JobSession", () => {
  test("each event once, in order; the end even if seen; asks to resume after the last", () => {
    const session = new JobSession();
    assert.deepEqual(session.resumeHeaders(), { accept: "text/event-stream" });
    assert.deepEqual(session.accept(message({ type: "running", message: "", seq: 1 })), {
      type: "started",
      seq: 1,
    });
    session.accept(message({ type: "running", message: "ab", seq: 2 }));
    assert.equal(session.accept(message({ type: "running", message: "ab", seq: 2 })), null);
    assert.equal(session.accept(message({ type: "a-future-type", seq: 3 })), null);
    assert.equal(session.lastSeq, 3, "an unknown frame's seq counts: it is not asked again");
    assert.equal(session.resumeHeaders()["last-event-id"], "3");
    assert.equal(session.accept({ event: "message", data: "not json", id: null }), null);
    const done = session.accept(message({ type: "done", seq: 3 }));
    assert.equal(done.type, "done");
    assert.ok(session.ended);
    assert.deepEqual(session.message, { role: "assistant", content: "ab" });
  });

  test("pending only when the position moves; an error is a notice without seq", () => {
    const session = new JobSession();
    const pending = (position) => session.accept(message({ type: "pending", position }));
    assert.deepEqual(pending(2), { type: "pending", position: 2 });
    assert.equal(pending(2), null);
    assert.deepEqual(pending(1), { type: "pending", position: 1 });
    const notice = session.accept(message({ message: "store away" }, "error"));
    assert.deepEqual(notice, { type: "notice", message: "store away" });
    session.accept(message({ type: "running", message: "", seq: 1 }));
    assert.deepEqual(pending(1), { type: "pending", position: 1 }, "running forgets the position");
  });

  test("the answer from its events; a reset voids it; done's message wins", () => {
    const session = new JobSession(4);
    const frames = [
      { type: "running", message: "lost", seq: 5 },
      { type: "reset", attempt: 2, seq: 6 },
      { type: "reasoning", message: "hm", seq: 7 },
      { type: "tool_call", index: 1, id: "c2", name: "g", arguments: '{"b"', seq: 8 },
      { type: "tool_call", index: 0, id: "c1", name: "f", arguments: "{}", seq: 9 },
      { type: "tool_call", index: 1, arguments: ":1}", seq: 10 },
      { type: "tool_call", arguments: "no index", seq: 11 },
    ];
    const events = frames.map((frame) => session.accept(message(frame)));
    assert.equal(events.at(-1), null);
    assert.deepEqual(session.message, {
      role: "assistant",
      content: null,
      tool_calls: [
        { id: "c1", type: "function", function: { name: "f", arguments: "{}" } },
        { id: "c2", type: "function", function: { name: "g", arguments: '{"b":1}' } },
      ],
      reasoning: "hm",
    });
    const whole = { role: "assistant", content: "from the server" };
    session.accept(message({ type: "done", seq: 12, message: whole, finish_reason: "stop" }));
    assert.deepEqual(session.message, whole);
    assert.equal(session.end.finishReason, "stop");
  });

  test("the end from a status: only of a job that ended", () => {
    const session = new JobSession(9);
    assert.equal(session.endFromStatus({ state: "running" }), null);
    assert.ok(!session.ended);
    assert.deepEqual(session.endFromStatus({ state: "failed", error: "boom" }), {
      type: "failed",
      message: "boom",
      seq: 9,
    });
    assert.ok(session.ended);
  });
});

describe("Backoff", () => {
  test("waits double up to the maximum; a success starts again", async () => {
    const backoff = new Backoff(retryPolicy({ initialDelayMs: 1, maxDelayMs: 4 }));
    assert.ok(!backoff.exhausted);
    const delays = [];
    for (let i = 0; i < 4; i++) {
      backoff.failed();
      delays.push(backoff.delay);
      await backoff.wait();
    }
    assert.deepEqual(delays, [1, 2, 4, 4]);
    backoff.succeeded();
    assert.equal(backoff.delay, 1);
    assert.equal(backoff.failingSince, null);
  });

  test("giveUpAfterMs 0 (retry: false) gives up at the first failure", () => {
    const backoff = new Backoff(retryPolicy(false));
    assert.ok(!backoff.exhausted);
    backoff.failed();
    assert.ok(backoff.exhausted);
  });
});
