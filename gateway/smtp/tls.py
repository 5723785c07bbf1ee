"""How optgate's client checks the next hop's certificate when it speaks STARTTLS.

``[relay] tls_verify``: ``auto`` checks it unless the next hop is a loopback address
(the Postfix reinjection port on the same machine), ``always`` checks it there too,
``never`` does not check it. Checked means the chain against the system's CAs (or
``[relay] tls_ca_file`` for a private CA) and the name or IP address in
``[relay] next_hop``; a next hop that fails is answered 451 4.7.5 and gets nothing.
"""

from __future__ import annotations

import ipaddress
import ssl

from gateway.config import Relay
from suppression.errors import ConfigError


def loopback(host: str) -> bool:
    """A loopback address or the name localhost."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def verifies(setting: str, host: str) -> bool:
    """Whether the next hop's certificate is checked."""
    return setting == "always" or (setting == "auto" and not loopback(host))


def client_context(relay: Relay) -> ssl.SSLContext | None:
    """The TLS context of connections to the next hop; None when certificates are not
    checked. A CA file that cannot be read is a ConfigError naming the key."""
    if not verifies(relay.tls_verify, relay.next_hop.host):
        return None
    try:
        return ssl.create_default_context(cafile=relay.tls_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(f"[relay] tls_ca_file {relay.tls_ca_file}: {why}") from None
