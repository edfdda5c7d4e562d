"""The server: the ASGI app, its WebSocket and HTTP endpoints, access and origins, the
OpenAPI document, and uvicorn as this service runs it."""
