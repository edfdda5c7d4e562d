// Typed events in the browser client: reasoning, tool calls in fragments, refusals,
// and the finished message, first from scripted answers, then from a real worker whose
// model asks for tools (an agent loop).
//
//     node --test tests/js/

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Client } from "../../src/llm_worker/server/static/client.js";

import {
  TEST_TIMEOUT,
  collect,
  frame,
  json,
  scriptedFetch,
  sse,
  startServers,
} from "./support.mjs";

const J = "job-1";
const WEATHER = '{"city": "Paris", "unit": "celsius"}';
const TIME = '{"timezone": "Europe/Paris"}';
const FINISHED = {
  role: "assistant",
  content: null,
  tool_calls: [
    { id: "call_a", type: "function", function: { name: "get_weather", arguments: WEATHER } },
    { id: "call_b", type: "function", function: { name: "get_time", arguments: TIME } },
  ],
};

/** `text` cut every `every` characters. */
function cuts(text, every) {
  const pieces = [];
  for (let i = 0; i < text.length; i += every) pieces.push(text.slice(i, i + every));
  return pieces;
}

/** Frames of two parallel calls, their fragments interleaved and cut every `every`
 * characters, from seq `first` on; the first fragment of each says its id and name. */
function twoCalls(every, first = 2) {
  const frames = [];
  let seq = first;
  const calls = [
    [0, cuts(WEATHER, every), "call_a", "get_weather"],
    [1, cuts(TIME, every), "call_b", "get_time"],
  ];
  for (let i = 0; i < Math.max(calls[0][1].length, calls[1][1].length); i++) {
    for (const [index, pieces, id, name] of calls) {
      if (i >= pieces.length) continue;
      const start = i === 0 ? { id, name } : {};
      frames.push({ type: "tool_call", job_id: J, index, ...start, arguments: pieces[i], seq: seq++ });
    }
  }
  return frames;
}

function streamOf(frames, options) {
  return () => sse(frames.map((f) => frame(f)).join(""), options);
}

/** A scripted fetch that also records each URL's query. */
function recording(script) {
  const scripted = scriptedFetch(script);
  const queries = [];
  const fetch = (url, init) => {
    queries.push(new URL(url).search);
    return scripted.fetch(url, init);
  };
  return { fetch, queries, calls: scripted.calls };
}

describe("typed events, on scripted answers", () => {
  test("the client asks for typed events, on the stream and the status", async () => {
    const { fetch, queries } = recording([
      streamOf([{ type: "done", job_id: J, seq: 1, message: FINISHED }]),
      () => json(200, { type: "status", job_id: J, state: "done", output: "", message: FINISHED }),
    ]);
    const job = new Client("http://w.test", { fetch }).job(J);
    await collect(job);
    const status = await job.status();
    assert.deepEqual(status.message, FINISHED);
    assert.deepEqual(queries, ["?events=typed", "?events=typed"]);
  });

  for (const every of [1, 3, 100]) {
    test(`tool calls cut every ${every} characters come together`, async () => {
      const fragments = twoCalls(every);
      const last = fragments.at(-1).seq;
      const { fetch } = recording([
        streamOf(
          [
            { type: "running", job_id: J, message: "", seq: 1 },
            ...fragments,
            { type: "done", job_id: J, seq: last + 1, finish_reason: "tool_calls" },
          ],
          { size: 7 },
        ),
      ]);
      const job = new Client("http://w.test", { fetch }).job(J);
      const events = [];
      for await (const event of job) {
        events.push(event);
        if (event.seq === 3) {
          // In progress: the first fragment of each call, with its id and name.
          assert.deepEqual(
            job.toolCalls.map((c) => [c.id, c.function.name]),
            [
              ["call_a", "get_weather"],
              ["call_b", "get_time"],
            ],
          );
        }
      }
      assert.deepEqual(events[1], {
        type: "tool_call",
        index: 0,
        id: "call_a",
        name: "get_weather",
        arguments: cuts(WEATHER, every)[0],
        seq: 2,
      });
      assert.equal(events.at(-1).message, null); // a server that sent none: put together
      assert.deepEqual(job.message, FINISHED);
      const result = await job.result();
      assert.deepEqual(result, {
        message: FINISHED,
        toolCalls: FINISHED.tool_calls,
        text: "",
        usage: null,
        finishReason: "tool_calls",
        providers: null,
      });
    });
  }

  test("reasoning, text and a refusal, and done's message", async () => {
    const finished = { role: "assistant", content: "No.", refusal: "Not that.", reasoning: "Hmm." };
    const { fetch } = recording([
      streamOf([
        { type: "reasoning", job_id: J, message: "Hm", seq: 1 },
        { type: "reasoning", job_id: J, message: "m.", seq: 2 },
        { type: "running", job_id: J, message: "No.", seq: 3 },
        { type: "refusal", job_id: J, message: "Not that.", seq: 4 },
        { type: "a-type-from-the-future", job_id: J, seq: 5 },
        { type: "done", job_id: J, seq: 6, message: finished },
      ]),
    ]);
    const job = new Client("http://w.test", { fetch }).job(J);
    const events = await collect(job);
    assert.deepEqual(
      events.slice(0, 4),
      [
        { type: "reasoning", text: "Hm", seq: 1 },
        { type: "reasoning", text: "m.", seq: 2 },
        { type: "text", text: "No.", seq: 3 },
        { type: "refusal", text: "Not that.", seq: 4 },
      ],
    );
    assert.equal(events.length, 5); // the unknown type skipped
    assert.deepEqual(events[4].message, finished);
    assert.deepEqual(job.message, finished);
    assert.equal(await job.text(), "No.");
  });

  test("a reset voids the calls, reasoning and text so far", async () => {
    const { fetch } = recording([
      streamOf([
        { type: "reasoning", job_id: J, message: "first thoughts", seq: 1 },
        { type: "running", job_id: J, message: "first text", seq: 2 },
        { type: "tool_call", job_id: J, index: 0, id: "call_x", name: "lost", arguments: "{", seq: 3 },
        { type: "reset", job_id: J, attempt: 2, seq: 4 },
        ...twoCalls(4, 5),
        { type: "done", job_id: J, seq: 100 },
      ]),
    ]);
    const job = new Client("http://w.test", { fetch }).job(J);
    await collect(job);
    assert.deepEqual(job.message, FINISHED);
  });

  test("a stream resumed in the middle of the arguments gives them once", async () => {
    const fragments = twoCalls(2);
    const middle = Math.floor(fragments.length / 2) + 1;
    const cut = fragments[middle - 1].seq;
    const end = { type: "done", job_id: J, seq: fragments.at(-1).seq + 1 };
    const { fetch, calls } = recording([
      // The stream drops inside both calls' arguments...
      streamOf(fragments.slice(0, middle), { size: 5, fail: new TypeError("terminated") }),
      // ...and the server's replay after Last-Event-ID overlaps what came.
      streamOf([...fragments.slice(middle - 3), end]),
    ]);
    const job = new Client("http://w.test", { fetch, retry: { initialDelayMs: 1 } }).job(J);
    const events = await collect(job);
    assert.deepEqual(
      calls.map((c) => c.lastEventId),
      [null, String(cut)],
    );
    assert.equal(events.filter((e) => e.type === "tool_call").length, fragments.length);
    assert.deepEqual(job.message, FINISHED);
  });

  test("from a server without typed events: text, and the message from it", async () => {
    const { fetch } = recording([
      streamOf([
        { type: "running", job_id: J, message: "", seq: 1 },
        { type: "running", job_id: J, message: "Bonjour", seq: 2 },
        { type: "done", job_id: J, seq: 3, finish_reason: "stop" },
      ]),
    ]);
    const job = new Client("http://w.test", { fetch }).job(J);
    const result = await job.result();
    assert.deepEqual(result.message, { role: "assistant", content: "Bonjour" });
    assert.deepEqual([result.text, result.toolCalls], ["Bonjour", []]);
  });
});

// -- against a worker ----------------------------------------------------------------

const TOOLS = ["get_weather", "get_time"].map((name) => ({
  type: "function",
  function: { name, parameters: { type: "object", properties: {} } },
}));
const AGENT = {
  streams: [
    {
      provider: "openai",
      settings: { model: "gpt-test", tools: TOOLS },
      messages: [{ role: "system", content: "You are an agent." }, { insert: "history" }],
    },
  ],
};
const RESULTS = { get_weather: "18 C, sunny", get_time: "12:00" };

/** The arguments of each call the events bring, joined, by index. */
function argumentsByCall(events) {
  const joined = [];
  for (const event of events) {
    if (event.type !== "tool_call") continue;
    joined[event.index] = (joined[event.index] ?? "") + event.arguments;
  }
  return joined;
}

describe("typed events, against a worker", { timeout: 3 * TEST_TIMEOUT }, () => {
  // The worker's model (serve_for_js.py) answers "tools" with reasoning and two calls,
  // and a history ending with tool results with those results.
  let servers;
  let client;

  before(
    async () => {
      servers = await startServers();
      client = new Client(servers.direct);
    },
    { timeout: TEST_TIMEOUT },
  );

  after(async () => {
    await servers?.stop();
  });

  test("an agent loop: two calls, their results, the answer", { timeout: TEST_TIMEOUT }, async () => {
    const history = [{ role: "user", content: "tools" }];
    const job = await client.submit("", AGENT, { history });
    const events = await collect(job);
    assert.equal(
      events
        .filter((e) => e.type === "reasoning")
        .map((e) => e.text)
        .join(""),
      "Two tools.",
    );
    const starts = events.filter((e) => e.type === "tool_call" && e.id !== null);
    assert.deepEqual(
      starts.map((e) => [e.index, e.id, e.name]),
      [
        [0, "call_a", "get_weather"],
        [1, "call_b", "get_time"],
      ],
    );
    assert.deepEqual(argumentsByCall(events), [WEATHER, TIME]);
    const result = await job.result();
    assert.deepEqual(result.message, { ...FINISHED, reasoning: "Two tools." });
    assert.deepEqual(events.at(-1).message, result.message);
    assert.equal(result.finishReason, "tool_calls");

    history.push(result.message);
    for (const call of result.toolCalls) {
      history.push({ role: "tool", tool_call_id: call.id, content: RESULTS[call.function.name] });
    }
    const answer = await (await client.submit("", AGENT, { history })).result();
    assert.equal(answer.text, "18 C, sunny 12:00");
    assert.deepEqual(answer.toolCalls, []);
  });

  test("cut in the middle of the arguments: each fragment once", { timeout: TEST_TIMEOUT }, async () => {
    const proxied = new Client(servers.url, { retry: { giveUpAfterMs: 20_000 } });
    const history = [{ role: "user", content: "tools:slow" }];
    const job = await proxied.submit("", AGENT, { history });
    const events = [];
    let cuts = 0;
    for await (const event of job) {
      events.push(event);
      // Once inside the first call's arguments, once inside the second's.
      if (event.type === "tool_call" && event.index === cuts && event.arguments !== "") {
        const response = await fetch(`${servers.control}/cut`, { method: "POST" });
        // The stream's connection, and perhaps the add's, kept alive.
        assert.ok((await response.json()).cut >= 1, "a cut found no connection");
        cuts += 1;
      }
    }
    assert.equal(cuts, 2);
    assert.deepEqual(argumentsByCall(events), [WEATHER, TIME]);
    assert.deepEqual(job.toolCalls, FINISHED.tool_calls);
  });
});
