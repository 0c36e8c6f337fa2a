"""The FastAPI application: `create_app(run_folder, ...)` builds it, uvicorn (or any ASGI server) runs it.

The run is loaded once, in the lifespan, and every generation goes through one `Batcher`, so the
event loop only parses, validates and answers. Errors are shaped as `{"detail": "...", "errors":
[...]}` with the offending field named, and are always 4xx for bad input.

No `from __future__ import annotations` here: the /generate body type is built inside
`create_app`, and FastAPI must see the class itself, not a string it cannot resolve.
"""


import asyncio
import hmac
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.batcher import Batcher
from server.errors import ApiError
from server.latent import add_latent_routes
from server.limits import DEFAULTS, BodyLimitMiddleware, SecurityHeadersMiddleware, check_settings
from server.metrics import CONTENT_TYPE, MetricsMiddleware, ServerMetrics
from server.schemas import (
    MAX_CHAINS,
    MAX_SENTENCE_CHARS,
    ErrorResponse,
    GenerateResponse,
    Health,
    Info,
    ResolvedRequest,
    request_model,
)
from server.waiting import for_the_model
from textebm import __version__
from textebm.errors import NonFiniteError, UserError
from textebm.generation.sampling import SamplingOptions
from textebm.model.runs import load_config

STATIC = Path(__file__).parent / "static"
BLANK = "must hold a word (it is blank)"
NO_BODY = "required: a JSON object ({} for every default)"



def _error(status: int, detail: str, errors=None, headers=None) -> JSONResponse:
    body = ErrorResponse(detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _unreadable_body(cause: BaseException) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"body: not UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "body: JSON nested too deeply"
    return f"body: cannot be read as JSON ({str(cause).split(';')[0]})"


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _field(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


def create_app(run_folder, *, api_key: str | None = None, max_n: int = DEFAULTS["max_n"],
               max_length: int = DEFAULTS["max_length"], max_prior_steps: int = DEFAULTS["max_prior_steps"],
               queue_size: int = DEFAULTS["queue_size"], max_batch_sentences: int = DEFAULTS["max_batch_sentences"],
               max_body_bytes: int = DEFAULTS["max_body_bytes"], coalesce: bool = True,
               cors_origins: list[str] | None = None, device: str = "cpu", precision: str = "fp32",
               preloaded=None) -> FastAPI:
    """The app for one run folder. The folder's config is checked now (a wrong path fails here, not
    at the first request); the checkpoint is loaded once, at start-up (lifespan).

    `preloaded` (a `textebm.model.runs.LoadedRun` of this folder) skips that load: `textebm serve` loads
    the run before starting uvicorn, so a damaged checkpoint is a one-line error, not a traceback."""
    run_folder = Path(run_folder)
    load_config(run_folder)  # UserError for a folder that is not a run
    limits = {"max_n": max_n, "max_length": max_length, "max_prior_steps": max_prior_steps,
              "queue_size": queue_size, "max_batch_sentences": max_batch_sentences, "max_body_bytes": max_body_bytes}
    check_settings(limits, api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from textebm.model.runs import load_run

        try:
            run = (preloaded if preloaded is not None
                   else await asyncio.to_thread(load_run, run_folder, device, (), precision))
        except UserError as err:
            app.state.startup_error = err
            raise
        app.state.run = run
        app.state.stopping = asyncio.Event()
        app.state.batcher = Batcher(run.model, queue_size, max_batch_sentences, coalesce, on_batch=metrics.batch)
        metrics.watch(app.state.batcher)
        app.state.batcher.start()
        try:
            yield
        finally:
            await app.state.batcher.stop()

    # FastAPIOffline: /docs and /redoc load Swagger UI / ReDoc from the installed package, not a CDN,
    # so that the API's documentation page works offline and behind firewalls.
    app = FastAPIOffline(title="textebm", version=__version__, lifespan=lifespan,
                         description="Sentences from a trained latent-space EBM text model, and its latent "
                                     "space: reconstruction, interpolation, anomaly scores. "
                                     "The playground is at /, this documentation at /docs, the schema at "
                                     "/openapi.json.")
    app.state.startup_error = None
    app.state.limits = limits
    app.state.metrics = metrics = ServerMetrics()
    served_limits = {**limits, "max_chains": MAX_CHAINS, "max_sentence_chars": MAX_SENTENCE_CHARS}

    app.add_middleware(SecurityHeadersMiddleware)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    # set when shutdown begins (server/launch.py): a body still arriving is then answered 503 at once. Made in
    # the lifespan, on the loop that serves: an asyncio.Event belongs to the first loop that waits on it.
    app.state.stopping = None
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes,  # before anything reads the body
                       stopping=lambda: app.state.stopping)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the body limit's 413 too

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type")
        if request.method == "POST" and content_type and not _is_json(content_type):
            # FastAPI then hands the body over as bytes, and the message would be about a dictionary
            return _error(415, f"body: send JSON with Content-Type: application/json (not {content_type})")
        errors = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                position = err.get("loc", ("body", "?"))[-1]
                return _error(400, f"body: malformed JSON ({err.get('ctx', {}).get('error', 'invalid')} "
                                   f"at position {position})")
            message = (BLANK if err.get("type") == "string_pattern_mismatch"  # the one pattern: a word
                       else NO_BODY if err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",)
                       else err.get("msg", "invalid"))
            errors.append({"field": _field(err.get("loc", ())), "message": message,
                           "type": err.get("type", "invalid")})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "body: invalid"
        return _error(422, detail, errors)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.detail, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        detail = str(exc.detail)
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI's one message for any unreadable body
            detail = _unreadable_body(exc.__cause__)
        return _error(exc.status_code, detail, headers=getattr(exc, "headers", None))

    dependencies = [Depends(_key_checker(api_key))] if api_key else []
    GenerateRequest = request_model(max_n, max_length, max_prior_steps)
    error_responses = {code: {"model": ErrorResponse, "description": why} for code, why in [
        (400, "malformed JSON, or a body that is not UTF-8"), (408, "the body stopped arriving"),
        (413, "body too large"), (415, "the body was not sent as application/json"),
        (422, "a field is wrong (named in detail)"),
        (503, "queue full: retry after Retry-After seconds")]
        + ([(401, "missing or wrong API key")] if api_key else [])}

    @app.post("/generate", response_model=GenerateResponse, dependencies=dependencies, responses=error_responses)
    async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:  # type: ignore[valid-type]
        """Sample `n` sentences. A given seed with the same options gives the same sentences."""
        started = time.perf_counter()
        run = request.app.state.run
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        prior_steps = body.prior_steps if body.prior_steps is not None else run.config.prior_steps
        options = SamplingOptions(body.max_length, body.greedy, body.temperature, body.top_k, body.top_p,
                                  prior_steps)
        try:
            options.validate()
        except UserError as err:  # the schema already covers these; kept as a second line
            raise ApiError(422, str(err)) from None
        batcher: Batcher = request.app.state.batcher
        try:
            result = await for_the_model(request, batcher.submit(options, body.n, seed))
        except NonFiniteError as err:
            raise ApiError(422 if body.prior_steps is not None else 500,
                           f"prior_steps: the prior chain diverged ({err})") from None
        sentences = [run.vocab.decode(ids) for ids in result.ids]
        resolved = ResolvedRequest(n=body.n, max_length=body.max_length, temperature=body.temperature,
                                   top_k=body.top_k, top_p=body.top_p, greedy=body.greedy, seed=seed,
                                   prior_steps=prior_steps)
        took_ms = round((time.perf_counter() - started) * 1000, 2)
        return GenerateResponse(sentences=sentences, seed=seed, took_ms=took_ms,
                                queued_ms=round(result.queued_ms, 2), batch_requests=result.batch_requests,
                                request=resolved, model_step=run.step)

    add_latent_routes(app, max_n, max_length, max_batch_sentences, dependencies, error_responses)

    @app.head("/health", include_in_schema=False)
    @app.get("/health", response_model=Health)
    async def health(request: Request) -> Health:
        """Liveness and load: answered by the event loop, never behind a generation."""
        batcher: Batcher = request.app.state.batcher
        return Health(status="ok", queued=batcher.pending, busy=batcher.busy, batches=batcher.batches,
                      requests=batcher.requests)

    @app.get("/info", response_model=Info, dependencies=dependencies,
             responses={401: {"model": ErrorResponse}} if api_key else {})
    async def info(request: Request) -> Info:
        """What is being served: the run, its vocabulary and latent sizes, its config, and the limits."""
        run = request.app.state.run
        return Info(version=__version__, run=run.folder.name, step=run.step, corpus=run.config.corpus,
                    vocab_size=len(run.vocab), latent_dim=run.model.prior.latent_dim, prior=run.config.prior,
                    prior_steps=run.config.prior_steps, device=str(run.model.device),
                    precision=run.model.decoding_precision, limits=served_limits,
                    auth=api_key is not None, config=run.config.to_dict())

    @app.get("/metrics", response_class=Response, dependencies=dependencies,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        **({401: {"model": ErrorResponse}} if api_key else {})})
    async def metrics_endpoint() -> Response:
        """Counters for Prometheus: requests and their durations per endpoint and status code, sentences
        generated, batch sizes, queue depth (server/metrics.py)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _key_checker(api_key: str):
    """A dependency accepting `Authorization: Bearer KEY` or `X-API-Key: KEY` (compared in constant time)."""
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")
    expected = api_key.encode()

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                    key: str | None = Depends(header)) -> None:
        offered = [c for c in (credentials.credentials if credentials else None, key) if c]
        if not any(hmac.compare_digest(c.encode(), expected) for c in offered):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key: KEY)",
                           {"WWW-Authenticate": "Bearer"})

    return check
