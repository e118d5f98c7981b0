"""What the feedback store holds and answers, as Python values: the records (a correction, a review item, an
expert, a served version, a retraining run, the counts), the errors its callers tell apart, and the helpers that
make a value storable (a token's hash, a mask packed to bits)."""

import hashlib
import unicodedata
from dataclasses import dataclass

import numpy as np

# An item's state follows from three of its columns (Item's fields of the same names): the first of these that is
# set names it; none set: pending. Item.state and the SQL that selects or counts states (schema) follow this order.
STATE_ORDER = (("consumed", "consumed_by"), ("rejected", "rejected_by"), ("withdrawn", "withdrawn"))


class ConflictError(ValueError):
    """An idempotency key reused for a different submission."""


class NotFoundError(LookupError):
    """What a request names is not stored."""


class StateError(ConflictError):
    """A change that the item's state does not allow (withdrawing a consumed correction): the message says its
    state."""


class NotAuthorError(ConflictError):
    """What only an item's author may do (withdraw it; see it with an expert's token), asked by someone else."""


class ClaimError(ValueError):
    """A review item the caller does not hold, or cannot take: the message says who holds it or why."""


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or cannot write now; the message says which database and why."""


@dataclass
class Item:
    image: bytes
    attention: np.ndarray  # h x w float32 in [0, 1]
    label: str = ""
    predicted_label: str = ""
    prediction_id: str = ""
    model_name: str = ""
    model_version: str = ""
    author: str = ""
    idempotency_key: str = ""
    id: str = ""
    image_sha256: str = ""
    created: float = 0.0
    consumed_by: str | None = None
    rejected_by: str | None = None  # the run (or operator) that set it aside; pending when neither is set
    review_id: str = ""  # the review item this closes; its claim must be the author's
    decided: np.ndarray | None = None  # h x w bool, the pixels the expert decided; None: every pixel
    confirmed: bool = False  # the expert confirmed the model's map as it was
    withdrawn: float | None = None  # when its author took it back (while pending)
    reason: str = ""  # why it is in its state, in words (rejected, held back, withdrawn)
    promoted_version: str = ""  # the version the run that consumed it promoted

    @property
    def state(self) -> str:
        """pending, consumed, rejected or withdrawn: the first of STATE_ORDER whose column is set."""
        return next((state for state, column in STATE_ORDER if getattr(self, column) is not None), "pending")


@dataclass
class ReviewEntry:
    """An item of the review queue. prediction: the serialized abn.v1.Prediction, opaque to the store."""

    image: bytes
    prediction: bytes
    model_name: str
    predicted_label: str
    priority: float
    reason: str = ""
    id: str = ""
    image_sha256: str = ""
    created: float = 0.0
    claimed_by: str | None = None
    lease_until: float | None = None
    feedback_id: str | None = None


@dataclass
class Expert:
    name: str
    created: float
    role: str = "expert"  # or "operator": may also roll back, requeue and reject (settings.ROLES)


@dataclass
class Action:
    """Something an operator did, as the store audits it."""

    actor: str  # the operator's name ("service" for the service's token)
    action: str  # serve (a version recorded as served), requeue, reject
    model_name: str = ""
    run: str = ""  # the run it concerned, if any
    detail: str = ""  # what changed, in words
    at: float = 0.0  # when; the store sets it


@dataclass
class Run:
    """A retraining run as recorded at its end (serving.retraining)."""

    run: str  # its id (its folder under the retraining workdir)
    model_name: str
    started: float
    ended: float
    outcome: str  # promoted, refused, stopped or failed
    decided_by: str = ""  # the gate's deciding criterion, when it judged
    reason: str = ""  # why it stopped or failed, in words
    gate: dict | None = None  # the gate's verdict: each criterion with its figures and interval; None: not judged
    corrections_used: int = 0  # fine-tuned on
    corrections_kept_back: int = 0  # kept back to check the candidate on
    served_version: str = ""  # the version it started from
    version: str = ""  # the version it made and promoted


@dataclass
class Tally:
    """What the store holds, counted (for monitoring): each a count per key."""

    feedback: dict[tuple[str, str], int]  # (model, state) -> corrections
    authors: dict[str, int]  # author -> corrections
    review: dict[tuple[str, str], int]  # (model, waiting | claimed | lease_expired) -> open review items
    runs: dict[tuple[str, str], int]  # (model, outcome) -> retraining runs


@dataclass
class Served:
    """The archive (a file name in the shared model store) and version of a model that is served."""

    archive: str
    version: str
    updated: float


def token_hash(token: str) -> str:
    """What the store keeps of an expert's token. Tokens are 256 random bits, so a plain SHA-256 cannot be
    reversed by guessing; a slow password hash would only slow every call."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_plain_name(value: str) -> bool:
    """A class or model name that is also a safe folder name: no separators, no control characters, not . or .."""
    return value not in (".", "..") and not any(c in "/\\" or unicodedata.category(c) == "Cc" for c in value)


def pack_decided(decided: np.ndarray | None, shape: tuple[int, ...]) -> bytes | None:
    """What the store keeps of a mask of decided pixels: one bit per pixel, row-major; None when every pixel is
    decided, so that an all-decided mask and no mask are stored (and compared on a retry) alike."""
    if decided is None:
        return None
    mask = np.asarray(decided, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"decided: a {mask.shape} mask for a {shape} map")
    return None if mask.all() else np.packbits(mask, axis=None).tobytes()


def unpack_decided(packed, shape: tuple[int, int]) -> np.ndarray | None:
    if packed is None:
        return None
    return np.unpackbits(np.frombuffer(packed, np.uint8), count=shape[0] * shape[1]).reshape(shape).astype(bool)
