"""The HTTP API's request and response models (pydantic), with the request limits.

Every request model is strict and closed: unknown fields, wrong JSON types, NaN or
infinite numbers, out-of-range values and oversized strings or batches are rejected
with a 422 and a message naming the field, before any deployment sees the request.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raylib.schema import MAX_UTTERANCE_CHARS

MAX_BATCH = 256  # utterances per /v1/rewrite request
MAX_CANDIDATES = 32  # candidates per /v1/route request
MAX_ID_CHARS = 128

Utterance = Annotated[str, Field(min_length=1, max_length=MAX_UTTERANCE_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RewriteRequest(_Request):
    """One utterance (``utterance``) or a batch (``utterances``), never both."""

    utterance: Utterance | None = None
    utterances: Annotated[list[Utterance], Field(min_length=1, max_length=MAX_BATCH)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "RewriteRequest":
        if (self.utterance is None) == (self.utterances is None):
            raise ValueError("give exactly one of 'utterance' or 'utterances'")
        return self

    def texts(self) -> list[str]:
        return [self.utterance] if self.utterance is not None else list(self.utterances)


class RewriteResult(BaseModel):
    utterance: str
    normalized: str
    rewrite: str | None = Field(description="the rewrite to send to NLU instead; null keeps the utterance")
    score: float | None


class RewriteResponse(BaseModel):
    version: str | None = Field(description="rewrite-table version that answered; null when none is loaded")
    enabled: bool = Field(description="the table's feature flag; when false no rewrite is returned")
    results: list[RewriteResult]


class Candidate(_Request):
    domain: Name
    intent: Name
    skill_id: Name
    nlu_confidence: Probability


class Context(_Request):
    device_type: Name
    device_status: Name
    asr_confidence: Probability
    hour: Annotated[int, Field(ge=0, le=23)]


class RouteRequest(_Request):
    utterance: Utterance
    candidates: Annotated[list[Candidate], Field(min_length=1, max_length=MAX_CANDIDATES)]
    context: Context
    customer_id: Name | None = None


class RouteResponse(BaseModel):
    request_id: str = Field(description="key for joining feedback onto the decision log")
    action: int = Field(description="index of the chosen candidate")
    candidate: Candidate
    propensity: float = Field(description="mixture probability of the chosen action")
    decided_by: Literal["rp", "lp"]
    policy_version: str


class ArtifactVersion(BaseModel):
    version: str | None
    enabled: bool | None = None
    backend: str | None = None
    size: int | None = None


class VersionsResponse(BaseModel):
    rewrites: ArtifactVersion
    policy: ArtifactVersion


class HealthResponse(BaseModel):
    status: Literal["ok"]
    rewrites: str | None
    policy: str | None


class ReloadRequest(_Request):
    """Point the store's ``LATEST`` at ``version``, or one version back (``rollback``, as
    ``selflearn store rollback``); with neither, leave it. The reload answers once the new
    ``LATEST`` is served."""

    artifact: Literal["rewrites", "policy"]
    version: Name | None = None
    rollback: bool = False

    @model_validator(mode="after")
    def _version_or_rollback(self) -> "ReloadRequest":
        if self.rollback and self.version is not None:
            raise ValueError("give either 'version' or 'rollback', not both")
        return self


class ReloadResponse(BaseModel):
    artifact: str
    previous: str | None
    version: str
