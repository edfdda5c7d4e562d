/**
 * The answer of a job put together from its events as they are read (`Assembly`):
 * its text, reasoning and refusal, and each tool call from its fragments. Pure.
 *
 * @module llm-worker-client/assembly
 */

/**
 * The assistant message of a job's answer, the shape the OpenAI chat-completions API
 * takes back in the history: `content` is null when the answer is only tool calls;
 * `tool_calls`, `refusal` and `reasoning` are there only when there are some.
 *
 * @typedef {{role: "assistant", content: string | null, tool_calls?: ToolCall[],
 *   refusal?: string, reasoning?: string}} AssistantMessage
 */

/**
 * A tool call the model asks for; `function.arguments` is JSON text.
 *
 * @typedef {{id: string, type: "function", function: {name: string, arguments: string}}} ToolCall
 */

/**
 * A finished job, from `job.result()`.
 *
 * @typedef {object} JobResult
 * @property {AssistantMessage} message The message to append to the history as it is.
 * @property {ToolCall[]} toolCalls The tool calls it asks for (`[]` when none).
 * @property {string} text Its text (`""` when it is only tool calls).
 * @property {object | null} usage
 * @property {string | null} finishReason
 * @property {(string | null)[] | null} providers
 */

/**
 * The assistant message a job's events put together as they are read: text, reasoning,
 * refusal, and each tool call from its fragments (the first says its id and name, each
 * brings a piece of its arguments). A `reset` voids it: a new one takes its place.
 */
export class Assembly {
  constructor() {
    this.text = "";
    this.reasoning = "";
    this.refusal = "";
    /** @type {Map<number, {id: string, name: string, arguments: string}>} */
    this.calls = new Map();
  }

  /**
   * Takes in an event of the answer (`text`, `reasoning`, `refusal`, `tool_call`);
   * others bring nothing to it.
   *
   * @param {import("./events.js").JobEvent} event
   */
  take(event) {
    switch (event.type) {
      case "text":
        this.text += event.text;
        break;
      case "reasoning":
      case "refusal":
        this[event.type] += event.text;
        break;
      case "tool_call": {
        let call = this.calls.get(event.index);
        if (call === undefined) this.calls.set(event.index, (call = { id: "", name: "", arguments: "" }));
        if (event.id) call.id = event.id;
        if (event.name) call.name = event.name;
        call.arguments += event.arguments;
        break;
      }
      default:
        break;
    }
  }

  /** @returns {AssistantMessage} */
  message() {
    /** @type {AssistantMessage} */
    const message = { role: "assistant", content: this.text };
    if (this.calls.size > 0) {
      message.tool_calls = [...this.calls.entries()]
        .sort(([a], [b]) => a - b)
        .map(([, call]) => ({
          id: call.id,
          type: "function",
          function: { name: call.name, arguments: call.arguments },
        }));
      if (this.text === "") message.content = null;
    }
    if (this.refusal !== "") message.refusal = this.refusal;
    if (this.reasoning !== "") message.reasoning = this.reasoning;
    return message;
  }
}
