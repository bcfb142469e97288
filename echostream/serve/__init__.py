"""``echostream serve``: live simultaneous translation over WebSocket, whole files over HTTP.

- :mod:`.protocol` — the WebSocket protocol: message parsing, validation, error codes.
- :mod:`.scheduler` — :class:`~.scheduler.Scheduler`, which batches every ready stream into one
  model step per tick, and :class:`~.scheduler.ServedStream`, one client's stream.
- :mod:`.app` — the FastAPI app (``create_app(model, vocoder, config)``) and the CLI ``main``.

See docs/serve.md for the protocol, the HTTP API, limits and scale-out.
"""
