"""Settings the environment can change: where the services listen, where the feedback is stored.

ABN_LISTEN_ALL=1 (set in a container, where the published ports are the only
way in) makes the services listen on all interfaces by default and allows any
non-loopback address; without it, only loopback addresses are accepted. Beyond
loopback, tokens cannot be turned off.

ABN_FEEDBACK_STORE is the default feedback store of every command that has
--store (a file path, sqlite:///path or postgresql://...), so one variable
moves a deployment's store.
"""

import ipaddress
import os

LISTEN_ALL_ENV = "ABN_LISTEN_ALL"
STORE_ENV = "ABN_FEEDBACK_STORE"


def feedback_store() -> str:
    return os.environ.get(STORE_ENV) or "runs/feedback.db"


def listen_all() -> bool:
    return os.environ.get(LISTEN_ALL_ENV, "").strip().lower() in ("1", "true", "yes")


def default_host() -> str:
    return "0.0.0.0" if listen_all() else "127.0.0.1"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_host(host: str, what: str, token_off: bool = False) -> None:
    """Refuse an address beyond loopback unless ABN_LISTEN_ALL=1, and a service without a token there."""
    if is_loopback(host):
        return
    if not listen_all():
        raise ValueError(f"{what} would listen on {host}, beyond this machine: set {LISTEN_ALL_ENV}=1 to allow it "
                         f"(it listens on 127.0.0.1 otherwise)")
    if token_off:
        raise ValueError(f"{what} cannot run without a token on {host}: drop --no-token")


def add_store_argument(parser) -> None:
    parser.add_argument("--store", default=feedback_store(),
                        help=f"feedback store: a file path, sqlite:///path or postgresql://user@host/db "
                             f"(${STORE_ENV} sets the default)")
