"""FeedbackStore: what every feedback store answers, whichever database holds it."""

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager

from serving import settings
from serving.feedback.store.records import Action, Expert, Item, ReviewEntry, Run, Served, Tally


class FeedbackStore(ABC):
    @abstractmethod
    def submit(self, item: Item) -> tuple[str, bool]:
        """Store item durably; (id, created). A known idempotency key returns its id and False."""

    @abstractmethod
    def get(self, feedback_id: str) -> Item | None: ...

    @abstractmethod
    def items(
        self,
        since: float = 0.0,
        consumed: bool | None = None,
        model_name: str = "",
        with_data: bool = True,
        rejected: bool | None = None,
        author: str = "",
        state: str = "",
    ) -> Iterator[Item]:
        """Items oldest first. consumed=False: pending (neither consumed, rejected nor withdrawn); rejected=True:
        set aside; state: one of STATES; author: only theirs. with_data=False leaves out images, maps and masks."""

    @abstractmethod
    def stats(self, model_name: str = "", author: str = "") -> dict:
        """{"total", "by_state", "by_label", "by_model_version", "by_author", "confirmations", "pending_images",
        "conflicting_images"}, of model_name's and author's items when given."""

    @abstractmethod
    def mark_consumed(self, ids: list[str], run: str, version: str = "") -> int:
        """Record that run consumed these items (not withdrawn ones) and promoted version; the number marked."""

    @abstractmethod
    def mark_rejected(self, ids: list[str], by: str, reason: str = "") -> int:
        """Set these pending items aside (a refused run, or an operator), saying why; the number marked."""

    @abstractmethod
    def set_reason(self, ids: list[str], reason: str) -> int:
        """Say why these pending items were held back (consuming or rejecting them replaces it); the number
        changed."""

    @abstractmethod
    def withdraw(self, feedback_id: str, author: str, at: float | None = None) -> Item:
        """The item, taken back by its author while pending (without its image and map): retraining never uses
        it. at: when (a copy carries the source's time); now by default. NotFoundError when there is no such
        item, NotAuthorError when author is not its author, StateError when it is not pending."""

    @abstractmethod
    def requeue(self, ids: list[str]) -> int:
        """Make these rejected items pending again; the number changed."""

    @abstractmethod
    def ids_of(self, rejected: bool, author: str = "", rejected_by: str = "") -> list[str]:
        """The ids of pending (rejected=False) or rejected (True) items, of author and rejected by rejected_by
        when given. Withdrawn items are neither."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers now."""

    @abstractmethod
    def add_expert(self, name: str, token_sha256: str, role: str = "expert") -> None:
        """Record an expert by the hash of their token, with a role of settings.ROLES; ConflictError when the
        name is taken."""

    @abstractmethod
    def experts(self) -> list[Expert]: ...

    @abstractmethod
    def remove_expert(self, name: str) -> bool:
        """False when there was no such expert."""

    @abstractmethod
    def expert_for(self, token_sha256: str) -> str | None:
        """The name of the expert with this token hash."""

    @abstractmethod
    def expert_by_token(self, token_sha256: str) -> Expert | None:
        """The expert with this token hash, with their role."""

    @abstractmethod
    def add_review(self, entry: ReviewEntry) -> tuple[str, bool]:
        """Queue entry; (id, created). An image already open for the same model gives that item's id, False."""

    @abstractmethod
    def review_items(
        self,
        model_name: str = "",
        label: str = "",
        limit: int = settings.REVIEW_LIST_DEFAULT,
        viewer: str = "",
        hide_skipped: bool = False,
    ) -> list:
        """Open items not claimed by anyone but viewer, highest priority first, without their images;
        hide_skipped leaves out the items viewer skipped."""

    @abstractmethod
    def review_offered(self, expert: str, model_name: str = "", label: str = "") -> int:
        """How many open items claim_review would offer expert now: held by no one, not skipped by expert."""

    @abstractmethod
    def review_item(self, review_id: str) -> ReviewEntry | None: ...

    @abstractmethod
    def claim_review(
        self,
        expert: str,
        review_id: str = "",
        model_name: str = "",
        label: str = "",
        lease_s: float = settings.REVIEW_LEASE_S,
    ) -> ReviewEntry | None:
        """Claim the item named, or the open item of highest priority expert has not skipped, for lease_s
        seconds; None when no item waits. ClaimError when the item named is held by another or done,
        NotFoundError when there is no such item."""

    @abstractmethod
    def release_review(self, review_id: str, expert: str, skip: bool = True) -> None:
        """Give back expert's claim; after a skip, expert will not be offered the item again. ClaimError if not
        held, NotFoundError when there is no such item."""

    @abstractmethod
    def served(self, model_name: str) -> Served | None:
        """What promotion recorded last for model_name."""

    @abstractmethod
    def set_served(self, model_name: str, archive: str, version: str) -> None: ...

    @abstractmethod
    def served_models(self) -> list[str]: ...

    @abstractmethod
    def record_run(self, run: Run, report: bytes | None = None, feedback: Sequence[str] = ()) -> None:
        """Record a retraining run at its end, with its report image (PNG) and the ids of the corrections it
        took, in one transaction."""

    @abstractmethod
    def run_report(self, run: str) -> bytes | None:
        """A run's report image (PNG); None when it drew none."""

    @abstractmethod
    def reported_runs(self, runs: list[str]) -> set[str]:
        """Which of these runs have a report image."""

    @abstractmethod
    def run_corrections(self, run: str) -> dict[str, int]:
        """The corrections the run took, counted by their state now."""

    @abstractmethod
    def replace_served(self, model_name: str, archive: str, version: str, previous: str, action: Action) -> None:
        """Record version (archive) as served where the record names previous (or nothing), and audit action,
        together; StateError when the record names another version."""

    @abstractmethod
    def requeue_run(self, run: str, actor: str) -> int:
        """Make the run's rejected corrections pending again, audited as actor's; how many. NotFoundError for an
        unknown run, StateError when none is rejected."""

    @abstractmethod
    def reject_run(self, run: str, actor: str) -> int:
        """Set the run's pending corrections aside as rejected by operator actor, audited; how many.
        NotFoundError for an unknown run, StateError when none is pending."""

    @abstractmethod
    def actions(self, model_name: str = "", limit: int = 100) -> list[Action]:
        """What operators did (of model_name when given), newest first."""

    @abstractmethod
    def runs(self, model_name: str = "") -> list[Run]:
        """The recorded runs (of model_name when given), oldest first."""

    @abstractmethod
    def last_runs(self, judged: bool = False) -> list[Run]:
        """The latest run of each model (judged: the latest whose candidate the gate judged), by model name."""

    @abstractmethod
    def tally(self) -> Tally:
        """Corrections per model and state and per author, open review items per model and lease, runs per model
        and outcome: grouped counts, cheap enough to ask at every scrape."""

    @abstractmethod
    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """A lock named name, for every process that uses this database: yields True while this process holds
        it, False when another does (without waiting). A process that dies releases it."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def restore(self, item: Item) -> tuple[str, bool]:
        """Store item as it is (as copying a store does), keeping its id, created time and consumed_by; (id, created) as
        submit answers, and (item.id, False) when that id is stored already."""
