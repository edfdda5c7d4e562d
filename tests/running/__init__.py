"""The runner, the worker's concurrency, inserts, pipelines, fallbacks, limits."""
