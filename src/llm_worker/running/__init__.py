"""Running jobs: the runner and the worker, inserts and pipelines, the registries, and
the providers a deployment offers."""
