"""TLS to the next hop, over real sockets with a private CA: its certificate is checked
(chain and name) unless the next hop is a loopback address or the check is switched off;
a failed check is 451 4.7.5 with a log line, and nothing reaches the next hop."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.runtime.service import running
from gateway.smtp.tls import verifies
from suppression.errors import ConfigError
from tests.support.people import FAN, SENDER, seed
from tests.support.smtp import gateway_config, message, send, sink
from tests.support.tls import PrivateCA

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(
    ("setting", "host", "checked"),
    [
        ("auto", "127.0.0.1", False),
        ("auto", "::1", False),
        ("auto", "localhost", False),
        ("auto", "192.0.2.7", True),
        ("auto", "smarthost.example", True),
        ("always", "127.0.0.1", True),
        ("never", "smarthost.example", False),
    ],
)
def test_certificates_are_checked_unless_the_next_hop_is_loopback(
    setting: str, host: str, checked: bool
) -> None:
    assert verifies(setting, host) is checked


@pytest.mark.sockets
async def test_a_certificate_from_the_configured_ca_is_verified_and_mail_goes_out(
    tmp_path: Path,
) -> None:
    ca = PrivateCA.make(tmp_path / "ca")
    async with sink(tls=ca.server_context("127.0.0.1")) as hop:
        config = gateway_config(
            tmp_path, hop.port, relay_tls_verify="always", relay_tls_ca_file=str(ca.cert_file)
        )
        await seed(config)
        async with running(config) as gate:
            sent = await send(gate.smtp_port, SENDER, [FAN], message())
    assert sent.code == 250
    assert [m.tls for m in hop.messages] == [True]


@pytest.mark.parametrize(
    "why",
    ["another CA", "the system CAs", "another name"],
)
@pytest.mark.sockets
async def test_a_certificate_that_does_not_verify_is_451_and_nothing_is_sent(
    tmp_path: Path, why: str
) -> None:
    ca, other = PrivateCA.make(tmp_path / "ca"), PrivateCA.make(tmp_path / "other", "other CA")
    names = ("mx.other.example",) if why == "another name" else ("127.0.0.1",)
    trusted = {"another CA": other.cert_file, "the system CAs": ""}.get(why, ca.cert_file)
    async with sink(tls=ca.server_context(*names)) as hop:
        config = gateway_config(
            tmp_path, hop.port, relay_tls_verify="always", relay_tls_ca_file=str(trusted)
        )
        await seed(config)
        with capture_logs() as logs:
            async with running(config) as gate:
                sent = await send(gate.smtp_port, SENDER, [FAN], message())
    assert sent.code == 451
    assert "4.7.5" in sent.reply
    assert "certificate not verified" in sent.reply
    assert hop.messages == []
    failed = [e for e in logs if e["event"] == "next_hop_tls_failed"]
    assert failed  # each connection tried (learning the next hop's EHLO, the copy's) is logged
    assert {e["next_hop"] for e in failed} == {f"127.0.0.1:{hop.port}"}
    assert "@" not in repr(failed)


@pytest.mark.sockets
async def test_the_opt_out_and_a_loopback_next_hop_go_unverified(tmp_path: Path) -> None:
    ca = PrivateCA.make(tmp_path / "ca")
    for setting in ("never", "auto"):  # auto: 127.0.0.1 is loopback, as today
        async with sink(tls=ca.server_context("mx.other.example")) as hop:
            (tmp_path / setting).mkdir()
            config = gateway_config(tmp_path / setting, hop.port, relay_tls_verify=setting)
            await seed(config)
            async with running(config) as gate:
                sent = await send(gate.smtp_port, SENDER, [FAN], message())
        assert sent.code == 250, setting
        assert [m.tls for m in hop.messages] == [True]


def outward_address() -> str | None:
    """This machine's address on its default route, if it has one that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.mark.sockets
async def test_a_next_hop_off_loopback_is_verified_by_default(tmp_path: Path) -> None:
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no address off loopback")
    ca = PrivateCA.make(tmp_path / "ca")
    async with sink(tls=ca.server_context(address), host=address) as hop:
        for ca_file, expected in (("", 451), (str(ca.cert_file), 250)):
            settings = {"relay_next_hop": f"{address}:{hop.port}", "relay_tls_ca_file": ca_file}
            config = gateway_config(tmp_path, hop.port, 0, **settings)
            await seed(config)
            async with running(config) as gate:
                sent = await send(gate.smtp_port, SENDER, [FAN], message())
            assert sent.code == expected, sent.reply
    assert len(hop.messages) == 1


async def test_a_ca_file_that_cannot_be_read_stops_the_start_naming_the_key(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    for path in (garbage, tmp_path / "missing.pem"):
        config = gateway_config(tmp_path, 1, relay_tls_verify="always", relay_tls_ca_file=str(path))
        with pytest.raises(ConfigError, match=r"\[relay\] tls_ca_file"):
            async with running(config):
                pass
