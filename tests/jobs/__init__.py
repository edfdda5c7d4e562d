"""The job model, templates and usage."""
