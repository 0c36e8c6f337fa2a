"""Request and response bodies. The request model is built per app, so the limits the server was
started with appear in /openapi.json (and schemathesis fuzzes right up to them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**53 - 1  # JavaScript clients (the playground) hold integers exactly up to here


INTEGER_FIELDS = ("n", "max_length", "top_k", "seed", "prior_steps")


def _integral_float_to_int(value: Any) -> Any:
    """JSON Schema counts 29.0 as an integer (and so do JavaScript clients); 29.5, "29" and true stay errors."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**63:
        return int(value)
    return value



def request_model(max_n: int, max_length: int, max_prior_steps: int) -> type[BaseModel]:
    """The /generate body. Strict: "3" is not a number, true is not 1, unknown fields are errors."""

    limit_n, limit_length, limit_steps = max_n, max_length, max_prior_steps  # field names shadow these

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False,
                                  json_schema_extra={"examples": [{"n": 3, "temperature": 0.8, "seed": 42}]})

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

        @model_validator(mode="before")
        @classmethod
        def _integral_floats(cls, data: Any) -> Any:
            """Strict types, except that an integer field takes 3.0 as 3 (see `_integral_float_to_int`)."""
            if isinstance(data, dict):
                data = {k: _integral_float_to_int(v) if k in INTEGER_FIELDS else v for k, v in data.items()}
            return data

    return GenerateRequest


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
