// The official `openai` npm package, unchanged (pinned in package.json beside this file),
// pointed at a real worker's OpenAI doors: /v1/chat/completions, /v1/models and
// /v1/responses. The worker is tests/js/serve_for_js.py's: its `openai` provider is the
// loopback model server, which answers the query "tools" with some reasoning and two
// calls whose arguments come in fragments of 2 and 3 characters, and any other query
// with its own words, one token each.
//
// Not named *.test.mjs, so that `node --test tests/js/` (the JavaScript client's tests)
// leaves it out: tests/client/test_js_openai_sdk.py installs the package and runs it:
//
//     node --test tests/js/openai-sdk/doors.mjs

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import OpenAI from "openai";

import { collect, startServers, TEST_TIMEOUT } from "../support.mjs";

const MODEL = "gpt-4o-mini";
const TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      parameters: { type: "object", properties: { city: { type: "string" } } },
    },
  },
  {
    type: "function",
    function: {
      name: "get_time",
      parameters: { type: "object", properties: { timezone: { type: "string" } } },
    },
  },
];
const CALLS = [
  { id: "call_a", name: "get_weather", arguments: '{"city": "Paris", "unit": "celsius"}' },
  { id: "call_b", name: "get_time", arguments: '{"timezone": "Europe/Paris"}' },
];

let servers;
let client;

before(async () => {
  servers = await startServers();
  client = new OpenAI({ baseURL: `${servers.direct}/v1`, apiKey: "none", maxRetries: 0 });
});

after(async () => {
  await servers?.stop();
});

const ask = (content) => [{ role: "user", content }];

test("chat.completions.create answers with the model's text", { timeout: TEST_TIMEOUT }, async () => {
  const reply = await client.chat.completions.create({
    model: MODEL,
    messages: ask("Hello there"),
  });
  assert.equal(reply.object, "chat.completion");
  assert.equal(reply.model, MODEL);
  assert.equal(reply.choices.length, 1);
  assert.equal(reply.choices[0].message.role, "assistant");
  assert.equal(reply.choices[0].message.content, "Hello there");
  assert.equal(reply.choices[0].finish_reason, "stop");
  assert.ok(reply.usage.total_tokens > 0, JSON.stringify(reply.usage));
});

test("chat.completions.create streams text and usage", { timeout: TEST_TIMEOUT }, async () => {
  const stream = await client.chat.completions.create({
    model: `openai/${MODEL}`,
    messages: ask("one two three four"),
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = await collect(stream);
  const withChoices = chunks.filter((c) => c.choices.length > 0);
  const text = withChoices.map((c) => c.choices[0].delta.content ?? "").join("");
  assert.equal(text, "one two three four");
  assert.ok(withChoices.length >= 4, `the text came in ${withChoices.length} chunks`);
  assert.ok(chunks.every((c) => c.object === "chat.completion.chunk"));
  assert.equal(new Set(chunks.map((c) => c.id)).size, 1, "one id for the whole stream");
  assert.equal(withChoices.at(-1).choices[0].finish_reason, "stop");
  const usage = chunks.at(-1).usage;
  assert.ok(usage && usage.total_tokens > 0, `the last chunk's usage: ${JSON.stringify(usage)}`);
});

test(
  "two parallel tool calls in fragments, put together by the SDK's stream helper",
  { timeout: TEST_TIMEOUT },
  async () => {
    const stream = client.chat.completions.stream({
      model: MODEL,
      messages: ask("tools"),
      tools: TOOLS,
    });
    const fragments = [];
    stream.on("tool_calls.function.arguments.delta", (event) => fragments.push(event));
    const completion = await stream.finalChatCompletion();
    const { message, finish_reason: finish } = completion.choices[0];
    assert.equal(finish, "tool_calls");
    assert.deepEqual(
      message.tool_calls.map((c) => ({
        id: c.id,
        name: c.function.name,
        arguments: c.function.arguments,
      })),
      CALLS,
    );
    assert.deepEqual(JSON.parse(message.tool_calls[0].function.arguments), {
      city: "Paris",
      unit: "celsius",
    });
    const longest = Math.max(...fragments.map((f) => f.arguments_delta.length));
    assert.ok(fragments.length >= 10 && longest <= 3, `${fragments.length} fragments`);
    assert.deepEqual(new Set(fragments.map((f) => f.name)), new Set(["get_weather", "get_time"]));
  },
);

test("models.list reads the worker's list; a model not served: NotFoundError", {
  timeout: TEST_TIMEOUT,
}, async () => {
  // This worker's `openai` provider has no default model, so the list may be empty:
  // what is checked is that the SDK's page reads every model the worker lists.
  const models = [];
  for await (const model of client.models.list()) models.push(model);
  const raw = await (await fetch(`${servers.direct}/v1/models`)).json();
  assert.equal(raw.object, "list");
  assert.deepEqual(models, raw.data);
  await assert.rejects(client.models.retrieve("nobody/none"), (error) => {
    assert.ok(error instanceof OpenAI.NotFoundError, `${error.constructor.name}: ${error}`);
    assert.equal(error.code, "model_not_found");
    return true;
  });
});

test("responses.create answers with output_text", { timeout: TEST_TIMEOUT }, async () => {
  const response = await client.responses.create({ model: MODEL, input: "Hello there" });
  assert.equal(response.object, "response");
  assert.equal(response.status, "completed");
  assert.equal(response.model, MODEL);
  assert.equal(response.output_text, "Hello there");
  assert.ok(response.usage.total_tokens > 0, JSON.stringify(response.usage));
});

test("responses.create streams Responses events in order", { timeout: TEST_TIMEOUT }, async () => {
  const stream = await client.responses.create({
    model: MODEL,
    input: "five six seven",
    stream: true,
  });
  const events = await collect(stream);
  const kinds = events.map((e) => e.type);
  assert.equal(kinds[0], "response.created");
  assert.equal(kinds[1], "response.in_progress");
  assert.equal(kinds.at(-1), "response.completed");
  for (const kind of [
    "response.output_item.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_item.done",
  ]) {
    assert.ok(kinds.includes(kind), `no ${kind} in ${kinds.join(", ")}`);
  }
  const deltas = events.filter((e) => e.type === "response.output_text.delta");
  assert.equal(deltas.map((e) => e.delta).join(""), "five six seven");
  const seqs = events.map((e) => e.sequence_number);
  assert.deepEqual(
    seqs,
    [...seqs].sort((a, b) => a - b),
    `sequence numbers must grow: ${seqs.join(",")}`,
  );
  assert.equal(new Set(seqs).size, seqs.length, "each sequence number once");
  // The SDK adds output_text to a response it waited for, not to a streamed event's.
  const texts = events
    .at(-1)
    .response.output.flatMap((item) => item.content ?? [])
    .filter((part) => part.type === "output_text")
    .map((part) => part.text);
  assert.deepEqual(texts, ["five six seven"]);
});

test("responses stream two function calls with their arguments", { timeout: TEST_TIMEOUT }, async () => {
  const stream = await client.responses.create({
    model: MODEL,
    input: "tools",
    tools: TOOLS.map(({ function: f }) => ({ type: "function", ...f })),
    stream: true,
  });
  const events = await collect(stream);
  const done = events.filter((e) => e.type === "response.function_call_arguments.done");
  assert.deepEqual(
    done.map((e) => e.arguments),
    CALLS.map((c) => c.arguments),
  );
  const calls = events.at(-1).response.output.filter((item) => item.type === "function_call");
  assert.deepEqual(
    calls.map((c) => ({ id: c.call_id, name: c.name, arguments: c.arguments })),
    CALLS,
  );
});

test("a refused request raises the SDK's BadRequestError", { timeout: TEST_TIMEOUT }, async () => {
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: ask("Hello"), n: 2 }),
    (error) => {
      assert.ok(error instanceof OpenAI.BadRequestError, `${error.constructor.name}: ${error}`);
      assert.equal(error.status, 400);
      assert.equal(error.type, "invalid_request_error");
      assert.equal(error.param, "n");
      return true;
    },
  );
});
