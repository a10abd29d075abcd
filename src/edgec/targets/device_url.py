"""Device URLs for measuring on a device: ``rpc://HOST:PORT`` and ``tracker://HOST:PORT/KEY``.

Parsing only, no TVM and no network: the configuration checks ``--device`` with it at the CLI
edge, and the TVM backend (:mod:`edgec.targets.tvm.rpc`) connects to what it returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from edgec.errors import BadInputError

_URL = re.compile(
    r"^(?P<scheme>rpc|tracker)://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})"
    r"(?:/(?P<key>[^/\s]+))?/?$"
)


@dataclass(frozen=True)
class DeviceUrl:
    """Where a device's TVM RPC server is.

    Attributes:
        scheme: ``rpc`` (a server, directly) or ``tracker`` (a tracker that hands out servers).
        host: Host name or address.
        port: TCP port.
        key: The device key registered with a tracker (``tracker://`` only).
    """

    scheme: Literal["rpc", "tracker"]
    host: str
    port: int
    key: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.key}" if self.key else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{tail}"


def parse_device_url(text: str) -> DeviceUrl:
    """Parse ``rpc://HOST:PORT`` or ``tracker://HOST:PORT/KEY``.

    Raises:
        BadInputError: Any other form, a port outside 1-65535, or a tracker URL without a key.
    """
    match = _URL.match(text.strip())
    if not match:
        raise BadInputError(
            f"--device '{text}' is not a device URL; use rpc://HOST:PORT for a TVM RPC server "
            "or tracker://HOST:PORT/KEY for a TVM RPC tracker."
        )
    port = int(match["port"])
    if not 0 < port < 65536:
        raise BadInputError(f"--device '{text}': port {port} is outside 1-65535.")
    scheme = match["scheme"]
    key = match["key"]
    if scheme == "tracker" and not key:
        raise BadInputError(
            f"--device '{text}' names a tracker but no device key; use tracker://HOST:PORT/KEY."
        )
    if scheme == "rpc" and key:
        raise BadInputError(
            f"--device '{text}': a key only applies to trackers; use rpc://HOST:PORT."
        )
    return DeviceUrl(scheme, match["host"].strip("[]"), port, key)
