"""Every query of the feedback store, together: what the SQLite and PostgreSQL stores share."""

from serving.feedback.store.experts import ExpertQueries
from serving.feedback.store.feedback import FeedbackQueries
from serving.feedback.store.operators import OperatorQueries
from serving.feedback.store.runs import RunQueries
from serving.feedback.store.served import ServedQueries


class SQLStore(FeedbackQueries, ExpertQueries, ServedQueries, RunQueries, OperatorQueries):
    """The queries of every concept (corrections with the review queue, experts, the served record, runs, what
    operators do) over one SQLCore; an engine (sqlite, postgres) adds how to connect, run, migrate and lock."""
