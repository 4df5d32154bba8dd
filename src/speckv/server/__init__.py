"""`speckv serve`: an OpenAI-compatible HTTP server over one loaded Decoder (see docs/server.md).

app: routes and error shapes; worker: the single generation thread and its bounded queue;
generation: requests -> Decoder runs and usage; protocol: request models; metrics: Prometheus;
serve: uvicorn with a graceful SIGTERM."""

from speckv.server.app import create_app
from speckv.server.serve import serve

__all__ = ["create_app", "serve"]
