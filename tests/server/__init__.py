"""The server over real connections: the HTTP API, the full protocol, access, hardening."""
