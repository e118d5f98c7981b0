"""Are the services up: what `abn health` (the container's HEALTHCHECK, the Kubernetes probes) asks. It imports
the clients only, never the machine learning: probes run it every few seconds, and torch would make each take
seconds and a gigabyte."""

from serving.client import Client


def health(client: Client, model: str = "", feedback: bool = True) -> dict[str, bool]:
    """TorchServe answers its ping; the model has a ready worker (when named); the feedback service answers
    SERVING (when asked)."""
    checks = {"torchserve": client.ping()}
    if model:
        checks[f"model {model}"] = client.model_ready(model)
    if feedback:
        checks["feedback"] = client.feedback_serving()
    return checks
