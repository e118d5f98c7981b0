"""The feedback store's tables: the migrations that make them, written once for SQLite and PostgreSQL, and the
SQL that names an item's state from its columns."""

from serving.feedback.store.records import STATE_ORDER

# Each entry moves the schema from version i to i + 1. It is written once for both databases, so a version
# means the same tables in both; {seq}, {blob} and {real} are the column types that differ.
_MIGRATIONS = [
    """
    CREATE TABLE images (sha256 TEXT PRIMARY KEY, data {blob} NOT NULL);
    CREATE TABLE feedback (
        seq {seq},
        id TEXT NOT NULL UNIQUE,
        idempotency_key TEXT UNIQUE,
        image_sha256 TEXT NOT NULL REFERENCES images(sha256),
        map_height INTEGER NOT NULL,
        map_width INTEGER NOT NULL,
        map_values {blob} NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        predicted_label TEXT NOT NULL DEFAULT '',
        prediction_id TEXT NOT NULL DEFAULT '',
        model_name TEXT NOT NULL DEFAULT '',
        model_version TEXT NOT NULL DEFAULT '',
        author TEXT NOT NULL DEFAULT '',
        created {real} NOT NULL,
        consumed_by TEXT
    );
    CREATE INDEX feedback_model ON feedback(model_name, consumed_by);
    CREATE INDEX feedback_created ON feedback(created);
    """,
    # experts, and the review queue: open_key (image and model) is set while an item is open, so an image
    # waits once per model; the prediction is stored as the service received it (abn.v1.Prediction)
    """
    CREATE TABLE experts (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, created {real} NOT NULL);
    CREATE TABLE review (
        seq {seq},
        id TEXT NOT NULL UNIQUE,
        open_key TEXT UNIQUE,
        image_sha256 TEXT NOT NULL REFERENCES images(sha256),
        model_name TEXT NOT NULL,
        predicted_label TEXT NOT NULL,
        prediction {blob} NOT NULL,
        priority {real} NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created {real} NOT NULL,
        claimed_by TEXT,
        lease_until {real},
        feedback_id TEXT
    );
    CREATE INDEX review_open ON review(feedback_id, priority);
    CREATE TABLE review_skips (review_id TEXT NOT NULL, expert TEXT NOT NULL, PRIMARY KEY (review_id, expert));
    """,
    # a correction a refused retraining run (or an operator) set aside: not pending, not consumed
    """
    ALTER TABLE feedback ADD COLUMN rejected_by TEXT;
    """,
    # which archive of each model is served: promotion writes it, every replica follows it
    """
    CREATE TABLE served (model_name TEXT PRIMARY KEY, archive TEXT NOT NULL, version TEXT NOT NULL,
                         updated {real} NOT NULL);
    """,
    # which pixels the expert decided (bits, row-major; NULL: all, as every older row), confirmations, a
    # correction its author took back (when), why an item is in its state, and the version its run promoted
    """
    ALTER TABLE feedback ADD COLUMN decided {blob};
    ALTER TABLE feedback ADD COLUMN confirmed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE feedback ADD COLUMN withdrawn {real};
    ALTER TABLE feedback ADD COLUMN reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE feedback ADD COLUMN promoted_version TEXT NOT NULL DEFAULT '';
    CREATE INDEX feedback_author ON feedback(author);
    """,
    # every retraining run, recorded at its end (gate: the gate's verdict as JSON, NULL when it stopped before
    # judging), and an index that answers the counts per model and state without reading the corrections
    """
    CREATE TABLE runs (
        seq {seq},
        run TEXT NOT NULL,
        model_name TEXT NOT NULL,
        started {real} NOT NULL,
        ended {real} NOT NULL,
        outcome TEXT NOT NULL,
        decided_by TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        gate TEXT,
        corrections_used INTEGER NOT NULL DEFAULT 0,
        corrections_kept_back INTEGER NOT NULL DEFAULT 0,
        served_version TEXT NOT NULL DEFAULT '',
        version TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX runs_model ON runs(model_name, seq);
    CREATE INDEX feedback_state ON feedback(model_name, consumed_by, rejected_by, withdrawn);
    """,
    # experts' roles (an operator may also roll back, requeue and reject), each run's report image (so a page on
    # another machine shows it) and the corrections it took, and the audit of what operators did
    """
    ALTER TABLE experts ADD COLUMN role TEXT NOT NULL DEFAULT 'expert';
    CREATE TABLE run_reports (run TEXT PRIMARY KEY, png {blob} NOT NULL);
    CREATE TABLE run_feedback (run TEXT NOT NULL, feedback_id TEXT NOT NULL, PRIMARY KEY (run, feedback_id));
    CREATE TABLE audit (
        seq {seq},
        at {real} NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        model_name TEXT NOT NULL DEFAULT '',
        run TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_model ON audit(model_name, seq);
    """,
]
MIGRATIONS = [m.format(seq="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB", real="REAL") for m in _MIGRATIONS]
POSTGRES_MIGRATIONS = [
    m.format(seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", blob="BYTEA", real="DOUBLE PRECISION")
    for m in _MIGRATIONS
]
SCHEMA_VERSION = len(MIGRATIONS)
# An item's state, from its columns in STATE_ORDER; the first that applies wins (as Item.state).
STATE = (
    "CASE "
    + " ".join(f"WHEN {column} IS NOT NULL THEN '{state}'" for state, column in STATE_ORDER)
    + " ELSE 'pending' END"
)
PENDING = " AND ".join(f"{column} IS NULL" for _, column in STATE_ORDER)
STATES = {  # state -> the condition that selects it: no earlier state's column set, and its own set
    "pending": PENDING,
    **{
        state: " AND ".join([*(f"{earlier} IS NULL" for _, earlier in STATE_ORDER[:i]), f"{column} IS NOT NULL"])
        for i, (state, column) in enumerate(STATE_ORDER)
    },
}


def check_version(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"feedback store {where} has schema version {version}, newer than this "
            f"program's {SCHEMA_VERSION}: upgrade the program"
        )
