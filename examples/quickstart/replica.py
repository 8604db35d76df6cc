"""A model replica for the quickstart: serves the iris model over HTTP with the standard library.

    python replica.py --port 5001

Routes, the same as an Azure ML inference server (azmlinfsrv), so the router treats it alike:
  GET  /              -> 200 "Healthy" (liveness and readiness probe)
  POST /score         -> {"predictions": [...], "classes": [...]} for {"data": [[4 floats], ...]}
  GET  /swagger.json  -> an OpenAPI document describing /score

It trains the model on the fly when model.pkl is missing, so it also works on a fresh checkout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# train.py sits beside this script, and a script's own directory is always on sys.path.
from train import ensure_model

MAX_BODY_BYTES = 10 * 1024 * 1024
FEATURE_COUNT = 4


class BadRequest(Exception):
    """The client sent something we cannot score; answered with 400 and this message."""


class BodyTooLarge(Exception):
    """The body exceeds MAX_BODY_BYTES; answered with 413."""


def parse_rows(raw_body: bytes) -> list[list[float]]:
    """Validate `{"data": [[f1, f2, f3, f4], ...]}` and return the rows."""
    try:
        document = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict) or "data" not in document:
        raise BadRequest('expected a JSON object like {"data": [[5.1, 3.5, 1.4, 0.2]]}')
    rows = document["data"]
    if not isinstance(rows, list) or not rows:
        raise BadRequest('"data" must be a non-empty list of rows')
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != FEATURE_COUNT:
            raise BadRequest(f"row {index} must be a list of {FEATURE_COUNT} numbers")
        # bool is an int subclass in Python, but true/false is surely a mistake here.
        if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in row):
            raise BadRequest(f"row {index} must contain only numbers")
    return rows


def predict(bundle: dict[str, Any], rows: list[list[float]]) -> dict[str, Any]:
    class_names = bundle["class_names"]
    try:
        labels = bundle["model"].predict(rows)
    except ValueError as error:  # e.g. NaN or infinity in the input
        first_line = str(error).splitlines()[0]
        raise BadRequest(f"cannot score these rows: {first_line}") from None
    return {
        "predictions": [class_names[int(label)] for label in labels],
        "classes": class_names,
    }


def openapi_document(feature_names: list[str]) -> dict[str, Any]:
    row_schema = {
        "type": "array",
        "items": {"type": "number"},
        "minItems": FEATURE_COUNT,
        "maxItems": FEATURE_COUNT,
        "description": "Features in this order: " + ", ".join(feature_names),
    }
    json_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "inferfront quickstart: iris classifier", "version": "1.0.0"},
        "paths": {
            "/": {"get": {"summary": "Health probe", "responses": {"200": {"description": "OK"}}}},
            "/score": {
                "post": {
                    "summary": "Predict the iris species of each row",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ScoreRequest"},
                                "example": {"data": [[5.1, 3.5, 1.4, 0.2]]},
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One predicted class per row",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ScoreResponse"}
                                }
                            },
                        },
                        "400": {"description": "Invalid input", "content": json_content},
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "ScoreRequest": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "array", "items": row_schema}},
                },
                "ScoreResponse": {
                    "type": "object",
                    "properties": {
                        "predictions": {"type": "array", "items": {"type": "string"}},
                        "classes": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            }
        },
    }


class ReplicaHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections open, so the router can reuse them between requests.
    protocol_version = "HTTP/1.1"
    server_version = "quickstart-replica/1.0"
    bundle: dict[str, Any] = {}

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/":
            self.send_body(200, b"Healthy", "text/plain; charset=utf-8")
        elif path == "/swagger.json":
            self.send_json(200, openapi_document(self.bundle["feature_names"]))
        else:
            self.send_json(404, {"error": f"no route for GET {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            body = self.read_body()
            if path != "/score":
                self.send_json(404, {"error": f"no route for POST {path}"})
                return
            self.send_json(200, predict(self.bundle, parse_rows(body)))
        except BadRequest as error:
            self.send_json(400, {"error": str(error)})
        except BodyTooLarge as error:
            self.close_connection = True  # the rest of the body is still unread
            self.send_json(413, {"error": str(error)})

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked_body()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise BadRequest("invalid Content-Length") from None
        if length > MAX_BODY_BYTES:
            raise BodyTooLarge(f"request body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def read_chunked_body(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                self.close_connection = True
                raise BadRequest("invalid chunk size in chunked body") from None
            if size == 0:
                # Skip trailer fields up to the blank line ending the body.
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise BodyTooLarge(f"request body over {MAX_BODY_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF after each chunk

    def send_json(self, status: int, payload: Any) -> None:
        self.send_body(status, json.dumps(payload).encode(), "application/json")

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: an access line per request would flood a router that collects replica output.
        pass


class ReplicaServer(ThreadingHTTPServer):
    # Do not wait on idle keep-alive connections at shutdown: the router may hold some open.
    block_on_close = False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the quickstart iris model.")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ReplicaHandler.bundle, trained_now = ensure_model()
    if trained_now:
        print("model.pkl was missing or stale: trained it", file=sys.stderr, flush=True)
    server = ReplicaServer((args.host, args.port), ReplicaHandler)
    # SIGTERM (how the router stops replicas) ends serve_forever like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
