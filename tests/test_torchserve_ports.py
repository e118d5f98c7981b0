"""TorchServe on a port another process took: chosen free ports are chosen again, given ports are named.

A port that free_port found free is released before TorchServe binds it, so another process can take it in
between; here a socket takes it first, on purpose.
"""

import shutil
import socket

import pytest

from serving.torchserve.client import TorchServeClient
from serving.torchserve.config import ServeConfig
from serving.torchserve.process import PORT_TAKEN, PortTaken, TorchServe

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17")


def taken(port: int) -> socket.socket:
    """A listening socket on port, as another process would hold it."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_ports_chosen_free_are_chosen_again_when_another_process_takes_one(tmp_path):
    (tmp_path / "store").mkdir()
    cfg = ServeConfig.on_free_ports(tmp_path / "serve", tmp_path / "store", {})
    held = cfg.http_management_port
    with taken(held), TorchServe(cfg):
        with TorchServeClient(cfg.target) as client:
            assert client.ping()
        assert cfg.http_management_port != held and len(set(cfg.ports)) == 5
    log = (cfg.workdir / "torchserve.out").read_text()
    assert log.count(PORT_TAKEN) == 1  # the first start met the taken port, the second did not


def test_a_given_port_that_is_taken_is_named_in_the_error(tmp_path):
    (tmp_path / "store").mkdir()
    cfg = ServeConfig.on_free_ports(tmp_path / "serve", tmp_path / "store", {})
    cfg.ports_chosen_free = False  # as `abn serve --metrics-port ...` gives them: not TorchServe's to choose
    with taken(cfg.metrics_port), pytest.raises(PortTaken) as refused:
        TorchServe(cfg).start()
    assert f"another process holds one of its ports on 127.0.0.1 ({', '.join(map(str, cfg.ports))})" in str(
        refused.value
    )
    assert "stop that process or choose other ports" in str(refused.value)
    assert "Exception" not in str(refused.value)  # the log holds Java's words, the message does not
