"""Launching the HTTP server: its options, uvicorn around `create_app`, and `python -m server`.

`textebm serve` (textebm/cli/serve.py) registers these options and calls `serve`; the library and
the CLI stack on top of each other, and the server owns how it starts."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from server.limits import DEFAULTS, check_settings
from textebm.devices import add_device_argument, add_precision_argument, decoding_precision_warning, resolve_device
from textebm.errors import UserError

# The server's settings as the command line spells them (in its messages).
OPTIONS = {"max_n": "--max-n", "max_length": "--max-length", "max_prior_steps": "--max-prior-steps",
           "queue_size": "--queue-size", "max_batch_sentences": "--max-batch", "api_key": "--api-key"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's options (`textebm serve` and `python -m server`)."""
    p.add_argument("--checkpoint", required=True, help="run folder to serve")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", help="require this key (Authorization: Bearer KEY or X-API-Key: KEY) on every endpoint "
                        "but /health, / and the schema (so /metrics too)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable; default: CORS off)")
    p.add_argument("--max-n", type=int, default=DEFAULTS["max_n"],
                   help=f"most sentences per request (default {DEFAULTS['max_n']})")
    p.add_argument("--max-length", type=int, default=DEFAULTS["max_length"],
                   help=f"largest max_length a request may ask (default {DEFAULTS['max_length']}, at most 2000)")
    p.add_argument("--max-prior-steps", type=int, default=DEFAULTS["max_prior_steps"],
                   help=f"largest prior_steps (default {DEFAULTS['max_prior_steps']})")
    p.add_argument("--queue-size", type=int, default=DEFAULTS["queue_size"],
                   help="requests that may wait for the model; beyond: 503 with Retry-After "
                        f"(default {DEFAULTS['queue_size']})")
    p.add_argument("--max-batch", dest="max_batch_sentences", type=int, default=DEFAULTS["max_batch_sentences"],
                   help=f"most sentences decoded in one batch (default {DEFAULTS['max_batch_sentences']}; must be "
                        ">= --max-n)")
    p.add_argument("--no-coalesce", action="store_true", help="decode each request alone (no batching)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_precision_argument(p)
    # One torch thread by default: a server decodes small batches step by step, and two threads
    # on a busy 2-core machine measured 10-20x slower than one (docs/server.md). --threads N overrides.
    add_device_argument(p, threads=1)


def serve(args: argparse.Namespace) -> int:
    """Load the run once, build the app, run uvicorn until stopped; UserError for bad options."""
    import uvicorn

    from server.app import create_app
    from textebm.model.runs import load_run

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, not {args.port}")
    limits = {name: getattr(args, name) for name in ("max_n", "max_length", "max_prior_steps", "queue_size",
                                                     "max_batch_sentences")}
    check_settings(limits, args.api_key, spelled=OPTIONS.get)  # before the (slower) load
    device = resolve_device(args.device, args.threads, args.tf32)
    if warning := decoding_precision_warning(args.precision, device):
        print(f"textebm serve: warning: {warning}", file=sys.stderr)
    loaded = load_run(args.checkpoint, device, precision=args.precision)  # once; damage is a UserError here
    app = create_app(args.checkpoint, preloaded=loaded, api_key=args.api_key, **limits,
                     coalesce=not args.no_coalesce, cors_origins=args.cors_origin or None, device=str(device))
    if not _is_loopback(args.host) and args.api_key is None:
        print(f"textebm serve: warning: listening on {args.host} without --api-key: anyone who can reach "
              "this port can generate", file=sys.stderr)
    _check_address(args.host, args.port)  # a port in use or a wrong --host: one line, not uvicorn's log
    server = _server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
                                    timeout_graceful_shutdown=GRACE_S, http=head_deadline_protocol()), app)
    try:
        server.run()
    except SystemExit as exit_:  # uvicorn exits this way when it cannot start (port taken, ...)
        if app.state.startup_error is None:
            raise UserError(f"the server did not start on {args.host}:{args.port} (see the log above)") from exit_
    if app.state.startup_error is not None:
        raise app.state.startup_error
    if not server.started:
        raise UserError(f"the server did not start on {args.host}:{args.port} (see the log above)")
    return 0


# How long a stopping server lets the answers it is sending finish (uvicorn's graceful shutdown). The
# model's jobs do not wait on it: shutdown answers them 503 and stops the running one (server/batcher.py).
GRACE_S = 30
# A request's head (its line and headers) must arrive within this many seconds of the connection opening,
# or of the answer before it: uvicorn's keep-alive timeout starts only after an answer, so a client that
# opened connections and sent nothing, or a header a byte at a time, held a file descriptor each for ever,
# and a few hundred of them locked every other client out. Behind a reverse proxy the proxy's own limits
# come first (docs/server.md).
HEAD_TIMEOUT_S = 10.0


def head_deadline_protocol(timeout_s: float = HEAD_TIMEOUT_S):
    """uvicorn's h11 protocol, closing a connection whose next request head has not arrived `timeout_s`
    seconds after the connection opened or its last answer went out."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        _head_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._await_head()

        def on_response_complete(self):
            self._await_head()  # first: a pipelined request begins inside the call below, its head already here
            super().on_response_complete()

        def connection_lost(self, exc):
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _await_head(self):
            if self._head_timer is not None:
                self._head_timer.cancel()
            waited_after = self.cycle  # a new request's head makes a new cycle
            self._head_timer = self.loop.call_later(timeout_s, self._head_late, waited_after)

        def _head_late(self, waited_after):
            if self.cycle is waited_after and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadline


def _server(config, app):
    """uvicorn's server, telling the app when shutdown begins: requests waiting for the model or running
    on it are answered 503 at once by the batcher (the running job stops within a step), and a body still
    arriving by the body limit, instead of being cancelled (a 500 each) when the grace ends."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            batcher = getattr(app.state, "batcher", None)
            if batcher is not None:
                batcher.close()
            if getattr(app.state, "stopping", None) is not None:
                app.state.stopping.set()
            await super().shutdown(sockets=sockets)

    return Server(config)


def _check_address(host: str, port: int) -> None:
    """UserError for an address uvicorn could not bind (it would log the reason and exit); a probe
    bound and closed, so that uvicorn still binds, and logs, as it does by itself."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise UserError(f"--host {host}: {err.strerror}") from None
    except UnicodeError:  # refused by the IDNA codec before any resolver: a label over 63 characters, or empty
        raise UserError(f"--host {host}: not a valid host name") from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own socket
        try:
            probe.bind(address)
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m server --checkpoint RUN ...`: the same as `textebm serve` (used by bench/load_test.py)."""
    parser = argparse.ArgumentParser(prog="python -m server", description="serve a textebm run over HTTP")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except UserError as err:
        print(f"textebm serve: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
