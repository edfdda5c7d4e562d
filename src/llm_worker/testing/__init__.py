"""Real servers for tests and benchmarks: a loopback OpenAI-compatible server, a private Redis."""
