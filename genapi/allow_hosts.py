"""[media] allow_hosts entries: hostnames, IP addresses and CIDR networks, each with an
optional :port (server/media/policy.py matches fetch targets against them)."""
from __future__ import annotations

import ipaddress


def allow_hosts(value) -> list[str]:
    """[media] allow_hosts: a list of hostnames, IP addresses or CIDR networks."""
    if not isinstance(value, list) or not all(isinstance(h, str) and h.strip() for h in value):
        raise ValueError(f"[media] allow_hosts = {value!r}: must be a list of hostnames, addresses or CIDRs")
    for h in value:
        parse_allow_entry(h)
    return [h.strip() for h in value]


AllowEntry = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | None, str | None, int | None]


def parse_allow_entry(entry: str) -> AllowEntry:
    """One allow_hosts entry -> (network or None, hostname or None, port or None);
    ValueError naming the entry when it is none of the accepted forms."""
    bad = ValueError(f"[media] allow_hosts entry {entry!r}: expected an address, a CIDR network, "
                     "a hostname, or one of these (not a network) with :port")
    if not isinstance(entry, str) or not entry.strip():
        raise bad
    text = entry.strip().lower()
    port = None
    if text.startswith("["):  # [v6] or [v6]:port
        inner, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise bad
            port = int(rest[1:])
        text = inner
    elif text.count(":") == 1:  # v4:port or name:port
        text, _, p = text.partition(":")
        if not p.isdigit():
            raise bad
        port = int(p)
    if port is not None and not 0 < port < 65536:
        raise bad
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        net = None
    if net is not None:
        if port is not None and net.num_addresses != 1:
            raise bad
        return net, None, port
    name = text.rstrip(".")
    if not name or not all(label and len(label) < 64 and all(c.isalnum() or c in "-_" for c in label)
                           for label in name.split(".")):
        raise bad
    return None, name, port
