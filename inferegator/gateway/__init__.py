"""The gateway: the OpenAI-compatible request path and the app that serves it."""
