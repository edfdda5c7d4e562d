/**
 * When to ask again, and how long to wait first: the retry policy, the answers worth
 * asking again for, and the back-off of a row of failures (`Backoff`). It only counts
 * and sleeps; the callers send.
 *
 * @module llm-worker-client/retry
 */

/**
 * How a stream that dropped is resumed. Times in milliseconds.
 *
 * @typedef {object} RetryOptions
 * @property {number} [initialDelayMs=50] The wait before the first new attempt.
 * @property {number} [maxDelayMs=2000] The wait doubles after each failure, up to this.
 * @property {number} [giveUpAfterMs=60000] Failing for this long in a row throws
 *   `ConnectionLost` (0: give up at the first failure).
 * @property {number} [idleTimeoutMs=45000] A stream that brings nothing for this long
 *   (the server sends a keep-alive comment every 15 s) counts as dropped.
 */

export const DEFAULT_RETRY = Object.freeze({
  initialDelayMs: 50,
  maxDelayMs: 2000,
  giveUpAfterMs: 60000,
  idleTimeoutMs: 45000,
});

// Answers worth asking again: the server or something before it is busy or away.
export const TRANSIENT_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);

/**
 * The whole policy from what a `Client` was given.
 *
 * @param {RetryOptions | number | false | undefined | null} retry
 * @returns {Required<RetryOptions>}
 */
export function retryPolicy(retry) {
  if (retry === undefined || retry === null) return { ...DEFAULT_RETRY };
  if (retry === false) return { ...DEFAULT_RETRY, giveUpAfterMs: 0 };
  if (typeof retry === "number") return { ...DEFAULT_RETRY, giveUpAfterMs: retry };
  const policy = { ...DEFAULT_RETRY };
  for (const name of Object.keys(DEFAULT_RETRY)) {
    if (retry[name] !== undefined) policy[name] = Number(retry[name]);
  }
  return policy;
}

/**
 * @param {Response} response
 * @returns {number} The wait `Retry-After` asks for, in milliseconds (0 if none).
 */
export function retryAfterMs(response) {
  const value = response.headers.get("retry-after");
  if (value === null) return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? 0 : Math.max(0, date - Date.now());
}

/** @param {number} ms */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/**
 * The back-off of a row of failures: the wait doubles from `initialDelayMs` up to
 * `maxDelayMs` (longer if the server asked for it), and the row is given up once it
 * has lasted `giveUpAfterMs`.
 */
export class Backoff {
  /**
   * @param {Required<RetryOptions>} policy
   * @param {number | null} [since] When the row started (`Date.now()` time); by default
   *   at the first failure.
   */
  constructor(policy, since = null) {
    this.policy = policy;
    /** @type {number | null} */
    this.failingSince = since;
    this.delay = policy.initialDelayMs;
    this.waitAtLeast = 0;
  }

  /**
   * An attempt failed.
   *
   * @param {number} [waitAtLeastMs] The wait the server asked for (`Retry-After`).
   */
  failed(waitAtLeastMs = 0) {
    this.failingSince ??= Date.now();
    this.waitAtLeast = Math.max(this.waitAtLeast, waitAtLeastMs);
  }

  /** An attempt did well: the next failure starts a new row, with the first wait. */
  succeeded() {
    this.failingSince = null;
    this.delay = this.policy.initialDelayMs;
    this.waitAtLeast = 0;
  }

  /** @returns {number} How long the row of failures has lasted, in milliseconds. */
  get elapsed() {
    return this.failingSince === null ? 0 : Date.now() - this.failingSince;
  }

  /** @returns {boolean} Whether the row has lasted `giveUpAfterMs`: time to give up. */
  get exhausted() {
    return this.failingSince !== null && this.elapsed >= this.policy.giveUpAfterMs;
  }

  /** Waits before the next attempt (never past the give-up time); the next wait is longer. */
  async wait() {
    const left = this.policy.giveUpAfterMs - this.elapsed;
    await sleep(Math.min(Math.max(this.delay, this.waitAtLeast), left));
    this.delay = Math.min(this.delay * 2, this.policy.maxDelayMs);
    this.waitAtLeast = 0;
  }
}
