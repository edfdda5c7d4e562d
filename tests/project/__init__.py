"""The project itself: its docs, layers, packaging, scripts and benchmarks."""
