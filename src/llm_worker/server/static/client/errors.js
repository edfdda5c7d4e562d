/**
 * The errors of the client, and the one an HTTP answer stands for (`errorFrom`): a
 * refusal is known by the stable `code` of its body, by its status only without one.
 *
 * @module llm-worker-client/errors
 */

/**
 * Any error of this client. For an HTTP error, `status` is its status code, `code` the
 * stable code of its JSON body `{"type":"error","code":...,"message":...}` (what to
 * branch on: `job_not_found`, `queue_full`, `rate_limited`, ...) and `message` the
 * server's message (for people).
 */
export class ClientError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, body?: unknown, cause?: unknown}} [details]
   */
  constructor(message, { status, code, body, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    /** @type {number | undefined} The HTTP status, if the server answered. */
    this.status = status;
    /** @type {string | undefined} The error's stable code, if the server sent one. */
    this.code = code;
    /** @type {unknown} The body of the server's answer (parsed JSON, or text). */
    this.body = body;
  }
}

/**
 * The server refused a request (HTTP 4xx): a bad template, a missing key, a tenant over
 * its limits, a cancel of a job that had ended (409)...; `message` is its reason.
 */
export class RequestRefused extends ClientError {}

/** The job does not exist, expired, or is another tenant's: HTTP 404. */
export class JobNotFound extends RequestRefused {}

/** The job ended with `failed`; `message` says why. */
export class JobFailed extends ClientError {
  /**
   * @param {string} jobId
   * @param {string} message
   */
  constructor(jobId, message) {
    super(message);
    /** @type {string} */
    this.jobId = jobId;
  }
}

/** The job was cancelled. */
export class JobCancelled extends ClientError {
  /** @param {string} jobId */
  constructor(jobId) {
    super(`job ${jobId} was cancelled`);
    /** @type {string} */
    this.jobId = jobId;
  }
}

/** The server could not be reached again for `retry.giveUpAfterMs`; `cause` is the last failure. */
export class ConnectionLost extends ClientError {}

// Names that survive minifiers, for messages and logs.
for (const [cls, name] of [
  [ClientError, "ClientError"],
  [JobNotFound, "JobNotFound"],
  [RequestRefused, "RequestRefused"],
  [JobFailed, "JobFailed"],
  [JobCancelled, "JobCancelled"],
  [ConnectionLost, "ConnectionLost"],
]) {
  Object.defineProperty(cls.prototype, "name", { value: name, configurable: true, writable: true });
}

/**
 * The error an HTTP answer stands for, with the server's message and code:
 * `JobNotFound` for the codes `job_not_found` and `expired`, `RequestRefused` for any other 4xx,
 * else `ClientError` (or `Kind`).
 *
 * @param {Response} response
 * @param {typeof ClientError} [Kind]
 * @returns {Promise<ClientError>}
 */
export async function errorFrom(response, Kind) {
  let body;
  let message = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  try {
    const text = await response.text();
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    if (body !== null && typeof body === "object" && typeof body.message === "string") {
      message = body.message;
    } else if (typeof body === "string" && body.trim() !== "") {
      message = body.trim().slice(0, 1000);
    }
  } catch {
    // No readable body: the status says it all.
  }
  const code =
    body !== null && typeof body === "object" && typeof body.code === "string" ? body.code : undefined;
  // A body without a code (a server from before codes, a proxy's page): a 404 is taken
  // for an unknown job, as the job routes are the only ones this client asks for.
  // An expired job is gone as an unknown one is (410, code `expired`).
  const notFound =
    code === undefined ? response.status === 404 : code === "job_not_found" || code === "expired";
  Kind ??= notFound ? JobNotFound : response.status < 500 ? RequestRefused : ClientError;
  return new Kind(message, { status: response.status, code, body });
}

/**
 * An error as a line of a message, with its cause's.
 *
 * @param {unknown} error
 * @returns {string}
 */
export function describe(error) {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? ` (${error.cause.message})` : "";
    return `${error.message}${cause}`;
  }
  return String(error);
}
