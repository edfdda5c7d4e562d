"""The Python and JavaScript clients and the CLI's client commands, against a real worker."""
