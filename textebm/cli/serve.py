"""`textebm serve`: the HTTP server; its options and launch live in `server.launch`."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from server.launch import add_arguments, serve

    p = subparsers.add_parser("serve", help="serve sentences over HTTP (POST /generate, playground at /)",
                              description="Serve a trained run over HTTP: POST /generate, /reconstruct, /interpolate, "
                                          "/score; GET /health, GET /info, GET /metrics (Prometheus text "
                                          "format, behind --api-key like /info); the playground at /, the API "
                                          "documentation at /docs, the OpenAPI schema at /openapi.json. Uses 1 "
                                          "torch thread unless --threads is given.")
    add_arguments(p)
    p.set_defaults(run=serve)
