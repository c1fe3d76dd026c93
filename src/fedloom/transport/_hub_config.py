"""Hub addresses and client TLS settings, as config files name them.

A pod's ``pod.toml`` and a modeller's task file both name a hub (``host:port``) and say how
to reach it (a ``[tls]`` table, or an explicit ``insecure = true``);
:func:`read_hub_connection` reads those keys from a :class:`~fedloom._config_file.TomlTable`
(the strict reader every config file shares).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedloom._config_file import TomlTable
from fedloom.errors import ConfigError

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252}[A-Za-z0-9_])?$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9_.-]{1,64})?$")


@dataclass(frozen=True)
class HubAddress:
    """Where a hub listens: a host name or IP address and a TCP port.

    Raises:
        ConfigError: the host is empty or not a host name / IP address, or the port is
            not an integer in 1..65535.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not (
            _HOSTNAME.fullmatch(self.host) or (":" in self.host and _IPV6.fullmatch(self.host))
        ):
            raise ConfigError(
                f"hub host {self.host!r} is not a host name or IP address "
                "(write host:port, e.g. 127.0.0.1:7800, with no scheme or path)"
            )
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigError(f"hub port must be an integer, got {self.port!r}")
        if not 1 <= self.port <= 65_535:
            raise ConfigError(f"hub port must be in 1..65535, got {self.port}")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_hub_address(text: object) -> HubAddress:
    """Parse ``host:port`` (an IPv6 address in brackets: ``[::1]:7800``).

    Raises:
        ConfigError: ``text`` is not a string of that form, or the host or port is invalid.
    """
    if not isinstance(text, str):
        raise ConfigError(f"a hub address must be a string host:port, got {type(text).__name__}")
    if "://" in text:
        raise ConfigError(f"hub address {text!r}: write host:port, with no scheme (grpc://...)")
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise ConfigError(f"hub address {text!r} must look like [ipv6-address]:port")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ConfigError(f"hub address {text!r} has no port: write host:port")
        if ":" in host:
            raise ConfigError(f"hub address {text!r}: write an IPv6 host in brackets, [::1]:7800")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ConfigError(f"hub address {text!r}: the port must be a number in 1..65535")
    return HubAddress(host, int(port_text))


@dataclass(frozen=True)
class TlsClientConfig:
    """How a client verifies the hub, and (mutual TLS) proves itself to it.

    ``ca`` is the certificate authority trusted for the hub's certificate; ``certificate``
    and ``key`` are the client's own, given both or neither.

    Raises:
        ConfigError: exactly one of ``certificate`` and ``key`` is given.
    """

    ca: Path
    certificate: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.key is None):
            raise ConfigError(
                "TLS certificate and key go together: give both (mutual TLS) or neither"
            )

    @property
    def mutual(self) -> bool:
        """Whether the client presents a certificate of its own."""
        return self.certificate is not None


def read_hub_connection(top: TomlTable) -> tuple[HubAddress, TlsClientConfig | None, bool]:
    """Read ``hub``, ``[tls]`` and ``insecure`` from a file's top-level table.

    Exactly one of a ``[tls]`` table and ``insecure = true`` must be given: plaintext to
    the hub is never a default.

    Returns:
        ``(address, tls, insecure)``; ``tls`` is None exactly when ``insecure`` is True.

    Raises:
        ConfigError: naming the key that is missing, malformed or contradicts another.
    """
    text = top.raw("hub", 'hub = "127.0.0.1:7800"')
    try:
        address = parse_hub_address(text)
    except ConfigError as exc:
        raise top.error("hub", str(exc)) from None
    insecure = top.boolean("insecure", False)
    section = top.table("tls")
    if section is None:
        if not insecure:
            raise ConfigError(
                f'{top.file}: tls: missing; add a [tls] table with ca = "<hub CA certificate>"'
                " (and certificate/key for mutual TLS), or set insecure = true at the top of "
                "the file to talk to the hub in plaintext (tests only)"
            )
        return address, None, True
    if insecure:
        raise top.error("insecure", "true contradicts the [tls] table: remove one of them")
    section.check_keys(
        {"ca", "certificate", "key"},
        {"insecure": "insecure = true belongs at the top of the file, before any [table]"},
    )
    ca = section.path("ca", 'ca = "tls/ca.crt"')
    certificate = section.optional_path("certificate")
    key = section.optional_path("key")
    if (certificate is None) != (key is None):
        missing = "key" if key is None else "certificate"
        raise section.error(
            missing, "missing: certificate and key go together (mutual TLS), give both or neither"
        )
    return address, TlsClientConfig(ca, certificate, key), False
