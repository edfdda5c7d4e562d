"""LLM Worker: runs LLM jobs from assistant templates, streams them over WebSockets."""

__version__ = "0.1.0"
