"""`textebm serve`: the HTTP server; its options and launch live in `server.launch`."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from server.launch import add_arguments, serve

    p = subparsers.add_parser("serve", help="serve sentences over HTTP (POST /generate, playground at /)",
                              description="Serve a trained run over HTTP: POST /generate, the latent endpoints "
                                          "POST /reconstruct, /interpolate and /score, GET /health, GET /info, "
                                          "GET /metrics (Prometheus text format), the playground at /, the API "
                                          "documentation at /docs, the OpenAPI schema at /openapi.json. --api-key "
                                          "guards every endpoint but /health, the playground and the documentation.")
    add_arguments(p)
    p.set_defaults(run=serve)
