"""The latent space over HTTP: POST /reconstruct, /interpolate and /score, the server's side of
`textebm reconstruct`, `textebm interpolate` and `textebm score` (the same library functions, the
same answers for the same seed).

The event loop only validates; each request runs as one job on the model's worker thread
(`Batcher.call`), in turn with the generation batches, so a long request never stalls /health.
A job whose client leaves, or that runs when the server stops, ends at its next posterior or
decoding step (the library's loops check `textebm.cancellation`), so the worker is free again at once.
A request's work is its sentences x chains posterior chains: at most the server's --max-batch, the
most sentences one generation batch decodes (422 beyond it), so that no request holds the model for
minutes (64 sentences x 16 chains took 108 s on a 2-core CPU) while others wait behind it.

No `from __future__ import annotations` here: FastAPI must see the request classes built in
`add_latent_routes`, not strings it cannot resolve.
"""

import secrets
import time

from fastapi import FastAPI, Request

from server.errors import ApiError
from server.schemas import (
    ErrorResponse,
    InterpolateResponse,
    ReconstructResponse,
    ScoreResponse,
    latent_request_models,
)
from server.waiting import for_the_model
from textebm.errors import NonFiniteError, UserError
from textebm.evaluation import anomaly
from textebm.generation import interpolation, reconstruction


def reconstruct_job(run, sentences: list[str], chains: int, seed: int) -> dict:
    """On the worker thread: what /reconstruct answers, per-sentence BLEU included."""
    result = reconstruction.reconstruct_lines(run.model, run.vocab, sentences, chains, seed)
    summary = result.summary()
    return {"sentences": result.rows(), "truncated": result.truncated,
            **{key: summary[key] for key in ("bleu", "exact_match", "baseline_bleu", "baseline_exact_match",
                                             "comparison", "inference")}}


def interpolate_job(run, source: str, target: str, points: int, chains: int, seed: int, max_length: int) -> dict:
    path = interpolation.interpolate(run.model, run.vocab, source, target, points, chains, seed, max_length)
    return {"points": [{"t": t, "sentence": s} for t, s in path]}


def score_job(run, sentences: list[str], num_chains: int, seed: int) -> dict:
    res = anomaly.score_lines(run.model, run.vocab, sentences, num_chains, seed)
    return {"scores": res.rows(sentences), "truncated": res.truncated}


def add_latent_routes(app: FastAPI, max_n: int, max_length: int, max_rows: int, dependencies: list,
                      responses: dict) -> None:
    ReconstructRequest, InterpolateRequest, ScoreRequest = latent_request_models(max_n, max_length)
    latent_responses = {**responses, 409: {"model": ErrorResponse, "description": "the run has no latent "
                                                                                   "(trained with prior=none)"}}

    async def on_worker(request: Request, what: str, job, *args) -> dict:
        try:
            return await for_the_model(request, request.app.state.batcher.call(job, request.app.state.run, *args))
        except NonFiniteError as err:
            raise ApiError(500, f"{what}: a posterior chain diverged ({err})") from None
        except UserError as err:
            raise ApiError(422, f"{what}: {err}") from None

    def latent_run(request: Request, what: str):
        run = request.app.state.run
        if not run.model.has_latent:
            raise ApiError(409, f"{what}: the run was trained with prior=none (a language model without a "
                                "latent): there is no latent space to explore")
        return run

    def check_rows(what: str, sentences: int, chains: int) -> None:
        if sentences * chains > max_rows:
            raise ApiError(422, f"{what}: {sentences} sentences x {chains} chains = {sentences * chains} chains, "
                                f"more than one request may ask of this server ({max_rows}, its --max-batch): send "
                                "fewer sentences or chains per request")

    def seed_of(seed):
        return seed if seed is not None else secrets.randbelow(2**31)

    @app.post("/reconstruct", response_model=ReconstructResponse, dependencies=dependencies,
              responses=latent_responses)
    async def reconstruct(body: ReconstructRequest, request: Request) -> ReconstructResponse:  # type: ignore[valid-type]
        """Each sentence's code by the run's own inference, decoded back greedily; corpus BLEU of the
        reconstructions against the inputs, and the same for greedy decodings of prior samples (a
        decoder that ignores z scores no better). Same seed, same answer as `textebm reconstruct`."""
        started = time.perf_counter()
        run = latent_run(request, "reconstruct")
        check_rows("reconstruct", len(body.sentences), body.chains)
        seed = seed_of(body.seed)
        out = await on_worker(request, "reconstruct", reconstruct_job, [s.strip() for s in body.sentences],
                              body.chains, seed)
        return ReconstructResponse(**out, chains=body.chains, seed=seed, model_step=run.step,
                                   took_ms=round((time.perf_counter() - started) * 1000, 2))

    @app.post("/interpolate", response_model=InterpolateResponse, dependencies=dependencies,
              responses=latent_responses)
    async def interpolate(body: InterpolateRequest, request: Request) -> InterpolateResponse:  # type: ignore[valid-type]
        """Sentences decoded (greedy) along the straight line between the codes of `from` and `to`,
        each code the mean of `chains` posterior samples. Same seed, same answer as `textebm interpolate`."""
        started = time.perf_counter()
        run = latent_run(request, "interpolate")
        check_rows("interpolate", 2, body.chains)
        seed = seed_of(body.seed)
        out = await on_worker(request, "interpolate", interpolate_job, body.source.strip(), body.target.strip(),
                              body.points, body.chains, seed, body.max_length)
        return InterpolateResponse(**out, chains=body.chains, seed=seed, model_step=run.step,
                                   took_ms=round((time.perf_counter() - started) * 1000, 2))

    @app.post("/score", response_model=ScoreResponse, dependencies=dependencies, responses=responses)
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:  # type: ignore[valid-type]
        """Anomaly scores: -log p(x, z) at posterior samples, averaged over `num_chains` chains, in total
        and per token (higher = more anomalous). Same seed, same scores as `textebm score`."""
        started = time.perf_counter()
        run = request.app.state.run
        check_rows("score", len(body.sentences), body.num_chains)
        seed = seed_of(body.seed)
        out = await on_worker(request, "score", score_job, [s.strip() for s in body.sentences], body.num_chains,
                              seed)
        return ScoreResponse(**out, num_chains=body.num_chains, seed=seed, model_step=run.step,
                             took_ms=round((time.perf_counter() - started) * 1000, 2))
