"""Request and response bodies. The request models are built per app, so the limits the server was
started with appear in /openapi.json (and schemathesis fuzzes right up to them)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

MAX_SEED = 2**53 - 1  # JavaScript clients (the playground) hold integers exactly up to here
MAX_CHAINS = 16  # posterior chains per sentence in the latent-space requests
MAX_SENTENCE_CHARS = 1000

INTEGER_FIELDS = ("n", "max_length", "top_k", "seed", "prior_steps", "chains", "points", "num_chains")
# A sentence holds at least one word: a character that is whitespace neither to Python (str.split,
# which the vocabularies use) nor to JSON Schema's regex dialect (ECMA-262's \s, which the fuzzer and
# other clients use); they differ on a few, so the class names every whitespace character of both.
WHITESPACE = r"\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
Sentence = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SENTENCE_CHARS, pattern=f"[^{WHITESPACE}]")]


def _integral_float_to_int(value: Any) -> Any:
    """JSON Schema counts 29.0 as an integer (and so do JavaScript clients); 29.5, "29" and true stay errors."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**63:
        return int(value)
    return value


class StrictRequest(BaseModel):
    """Strict: "3" is not a number, true is not 1, unknown fields are errors; but an integer field
    takes 3.0 as 3 (see `_integral_float_to_int`)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, regex_engine="python-re")

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: _integral_float_to_int(v) if k in INTEGER_FIELDS else v for k, v in data.items()}
        return data


def request_model(max_n: int, max_length: int, max_prior_steps: int) -> type[BaseModel]:
    """The /generate body."""

    limit_n, limit_length, limit_steps = max_n, max_length, max_prior_steps  # field names shadow these

    class GenerateRequest(StrictRequest):
        model_config = ConfigDict(json_schema_extra={"examples": [{"n": 3, "temperature": 0.8, "seed": 42}]})

        n: int = Field(1, ge=1, le=limit_n, description="number of sentences")
        max_length: int = Field(min(40, limit_length), ge=1, le=limit_length,
                                description="tokens per sentence, at most")
        temperature: float = Field(1.0, gt=0, le=100, description="softmax temperature (use greedy for 0)")
        top_k: int = Field(0, ge=0, le=1_000_000, description="sample among the k most probable tokens; 0: off")
        top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold in (0, 1]")
        greedy: bool = Field(False, description="argmax decoding (z still comes from the prior chain)")
        seed: int | None = Field(None, ge=0, le=MAX_SEED,
                                 description="same seed and options, same sentences; omitted: the server picks one")
        prior_steps: int | None = Field(None, ge=0, le=limit_steps,
                                        description="Langevin steps of the prior chain; omitted: the run's own")

    return GenerateRequest


def latent_request_models(max_n: int, max_length: int) -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """The /reconstruct, /interpolate and /score bodies: at most `max_n` sentences (or points) each."""

    limit_n, limit_length, max_points = max_n, max_length, max(2, max_n)  # field names shadow these

    def seed_field():
        return Field(None, ge=0, le=MAX_SEED, description="same seed, same answer; omitted: the server picks one")

    class ReconstructRequest(StrictRequest):
        model_config = ConfigDict(json_schema_extra={"examples": [{"sentences": ["the company said it expects "
                                                                                "to report a loss"], "seed": 1}]})

        sentences: list[Sentence] = Field(min_length=1, max_length=limit_n, description="sentences to reconstruct")
        chains: int = Field(1, ge=1, le=MAX_CHAINS, description="posterior samples averaged per code")
        seed: int | None = seed_field()

    class InterpolateRequest(StrictRequest):
        model_config = ConfigDict(json_schema_extra={"examples": [{"from": "stocks fell sharply",
                                                                   "to": "the bank raised its rate", "points": 5}]})

        source: Sentence = Field(alias="from", description="the sentence at t = 0")
        target: Sentence = Field(alias="to", description="the sentence at t = 1")
        points: int = Field(min(7, max_points), ge=2, le=max_points, description="points on the line, ends included")
        chains: int = Field(8, ge=1, le=MAX_CHAINS, description="posterior samples averaged per code")
        max_length: int = Field(min(40, limit_length), ge=1, le=limit_length, description="tokens per sentence")
        seed: int | None = seed_field()

    class ScoreRequest(StrictRequest):
        model_config = ConfigDict(json_schema_extra={"examples": [{"sentences": ["stocks fell", "fell stocks"]}]})

        sentences: list[Sentence] = Field(min_length=1, max_length=limit_n, description="sentences to score")
        num_chains: int = Field(4, ge=1, le=MAX_CHAINS, description="posterior chains averaged per sentence")
        seed: int | None = seed_field()

    return ReconstructRequest, InterpolateRequest, ScoreRequest


class ReconstructedSentence(BaseModel):
    input: str = Field(description="the sentence as the model sees it (unknown words as its unknown token)")
    reconstruction: str = Field(description="greedy decoding of the sentence's inferred code")
    exact: bool
    bleu: float = Field(description="sentence BLEU, 0-100")


class ReconstructResponse(BaseModel):
    sentences: list[ReconstructedSentence]
    bleu: float = Field(description="corpus BLEU of the reconstructions, 0-100")
    exact_match: float = Field(description="share of sentences reconstructed word for word")
    baseline_bleu: float = Field(description="corpus BLEU of greedy decodings of prior samples against the inputs")
    baseline_exact_match: float
    comparison: str = Field(description="how the two BLEU figures compare, in words")
    inference: str = Field(description="how the codes were found")
    truncated: int = Field(description="sentences cut to the run's max_length")
    chains: int
    seed: int
    took_ms: float
    model_step: int


class InterpolationPoint(BaseModel):
    t: float
    sentence: str


class InterpolateResponse(BaseModel):
    points: list[InterpolationPoint]
    chains: int
    seed: int
    took_ms: float
    model_step: int


class SentenceScore(BaseModel):
    sentence: str
    tokens: int = Field(description="predicted tokens: words + end of sentence")
    total: float = Field(description="-log p(x, z) at posterior samples, averaged over chains (nats)")
    per_token: float = Field(description="total / tokens: higher = more anomalous")


class ScoreResponse(BaseModel):
    scores: list[SentenceScore]
    truncated: int = Field(description="sentences cut to the run's max_length")
    num_chains: int
    seed: int
    took_ms: float
    model_step: int


class ResolvedRequest(BaseModel):
    """Every option as used, seed and prior_steps filled in: POST it back to get the same sentences."""

    n: int
    max_length: int
    temperature: float
    top_k: int
    top_p: float
    greedy: bool
    seed: int
    prior_steps: int


class GenerateResponse(BaseModel):
    sentences: list[str]
    seed: int
    took_ms: float = Field(description="time in the server, queueing included")
    queued_ms: float = Field(description="time waiting for the model")
    batch_requests: int = Field(description="requests decoded together with this one (1: alone)")
    request: ResolvedRequest
    model_step: int = Field(description="training step of the checkpoint that answered")


class Health(BaseModel):
    status: str
    queued: int = Field(description="requests waiting for the model")
    busy: bool = Field(description="a batch is being decoded right now")
    batches: int
    requests: int


class Info(BaseModel):
    version: str
    run: str
    step: int
    corpus: str
    vocab_size: int
    latent_dim: int
    prior: str
    prior_steps: int
    device: str
    precision: str  # of the decoder's matrix products when generating (fp32, bf16, int8)
    limits: dict[str, int]
    auth: bool
    config: dict[str, Any]


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, naming the field where there is one")
    errors: list[FieldError] | None = None
