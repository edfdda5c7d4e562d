"""The wire: the protocol's messages and frames, its dialects, the HTTP error codes.
Pure: no I/O."""
