"""Where to deliver a domain's mail: MX, then A/AAAA (RFC 5321 §5.1), null MX (RFC 7505), with dnspython.

dnspython's resolver is blocking, so each lookup runs in a small thread pool of its own (never on the
reactor thread, never starving the reactor's shared pool).  `MXResolver.route(domain)` fires with the
ordered list of `Target`s (host, address) to try, or fails with `RouteError` carrying the SMTP reply
that describes the problem (permanent: bounce; transient: retry later).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from mailsuite.relay.client import Reply

__all__ = ["Target", "RouteError", "MXResolver", "parse_nameserver", "MAX_TARGETS", "LAZY_MODULES"]

#: third-party modules imported on first use; ``service.preload`` imports them before ``--uid`` drops root
LAZY_MODULES = ("dns.exception", "dns.nameserver", "dns.resolver", "dns.rdtypes.ANY.MX", "dns.rdtypes.ANY.CNAME", "dns.rdtypes.IN.A",
                "dns.rdtypes.IN.AAAA")
MAX_TARGETS = 12        # addresses tried per attempt, at most (RFC 5321 §5.1 asks for a limit)


@dataclass(frozen=True)
class Target:
    host: str           # the MX host name (or the domain itself for the implicit MX)
    address: str        # IPv4 or IPv6 address
    preference: int = 0


class RouteError(Exception):
    """No usable route; `reply` says why (5xx: bounce now, 4xx: try again later)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def parse_nameserver(spec: str, default_port: int = 53) -> tuple[str, int]:
    """"1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353" -> (address, port)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, int(port)
    return spec, default_port


def _literal(domain: str) -> str | None:
    """RFC 5321 §4.1.3 address literal: "[192.0.2.1]" or "[IPv6:2001:db8::1]"."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


class MXResolver:
    """MX routing with dnspython in a bounded thread pool (see the module docstring)."""

    def __init__(self, *, nameservers: Iterable[str] = (), local_names: Iterable[str] = (),
                 reactor: Any = None, pool_size: int = 4, timeout: float = 20.0, ipv6: bool = True,
                 rng: random.Random | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.local_names = {n.lower().rstrip(".") for n in local_names if n}
        self.ipv6 = ipv6
        self.rng = rng or random.SystemRandom()
        self._servers = [parse_nameserver(s) for s in nameservers]   # bad specs fail here, at start
        self._timeout = timeout
        self._resolver: Any = None
        self.pool = ThreadPool(minthreads=0, maxthreads=max(1, pool_size), name="mailsuite-dns")
        self._started = False

    @property
    def resolver(self) -> Any:
        """The dnspython resolver, made (and dnspython imported: ~3 MB, see :data:`LAZY_MODULES`) when the
        relay first needs DNS, not at start: many home servers never relay without a smarthost."""
        if self._resolver is None:
            import dns.nameserver
            import dns.resolver

            if self._servers:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in self._servers]
            else:
                resolver = dns.resolver.Resolver()    # /etc/resolv.conf
            resolver.lifetime = self._timeout
            resolver.timeout = min(5.0, self._timeout)
            self._resolver = resolver
        return self._resolver

    def start(self) -> None:
        if not self._started:
            self.pool.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self.pool.stop()
            self._started = False

    def route(self, domain: str) -> Any:
        """Deferred[list[Target]] for `domain`, or a RouteError failure."""
        self.start()
        return threads.deferToThreadPool(self.reactor, self.pool, self.route_sync, domain)

    # ------------------------------------------------------------------------------------ blocking part

    def route_sync(self, domain: str) -> list[Target]:
        import dns.exception
        import dns.resolver

        domain = domain.lower().rstrip(".")
        literal = _literal(domain)
        if literal is not None:
            return [Target(domain, literal)]
        try:
            answer = self.resolver.resolve(domain, "MX", search=False)
            records = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in answer]
        except dns.resolver.NXDOMAIN:
            raise RouteError(Reply(550, (f"5.1.2 domain {domain} does not exist",))) from None
        except dns.resolver.NoAnswer:
            records = []
        except (dns.exception.DNSException, OSError) as exc:
            raise RouteError(Reply(451, (f"4.4.3 DNS lookup of {domain} MX failed: {exc}",))) from None

        implicit = False
        if any(host in ("", ".") for _, host in records):
            if len(records) == 1:
                # RFC 7505 §3: "MX 0 ." says the domain accepts no mail; §4.2: 556 5.1.10.
                raise RouteError(Reply(556, (f"5.1.10 domain {domain} accepts no mail (null MX)",)))
            records = [(p, h) for p, h in records if h not in ("", ".")]   # a broken mix: ignore the null
        if not records:
            # RFC 5321 §5.1: no MX records: the domain itself is the implicit MX (preference 0).
            records = [(0, domain)]
            implicit = True

        # RFC 5321 §5.1: lowest preference first; equal preferences in random order.
        by_pref: dict[int, list[str]] = {}
        for pref, host in records:
            by_pref.setdefault(pref, []).append(host)
        ordered: list[tuple[int, str]] = []
        for pref in sorted(by_pref):
            hosts = list(dict.fromkeys(by_pref[pref]))
            self.rng.shuffle(hosts)
            ordered += [(pref, h) for h in hosts]

        # RFC 5321 §5.1: if we are one of the MX hosts, only more preferred hosts may be tried.
        own = [pref for pref, host in ordered if host in self.local_names]
        if own:
            ordered = [(p, h) for p, h in ordered if p < min(own)]
            if not ordered:
                raise RouteError(Reply(554, (f"5.4.6 mail for {domain} loops back to myself",)))

        targets: list[Target] = []
        transient: str | None = None
        for pref, host in ordered:
            literal = _literal(host) or (host if self._is_ip(host) else None)
            if literal:
                targets.append(Target(host, literal, pref))
                continue
            for rdtype in (("AAAA", "A") if self.ipv6 else ("A",)):
                try:
                    # CNAME chains are followed by the resolver (RFC 5321 §5.1 asks for the canonical name).
                    answer = self.resolver.resolve(host, rdtype, search=False)
                    targets += [Target(host, r.address, pref) for r in answer]
                except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                    continue
                except (dns.exception.DNSException, OSError) as exc:
                    transient = f"4.4.3 DNS lookup of {host} {rdtype} failed: {exc}"
            if len(targets) >= MAX_TARGETS:
                break
        targets = list(dict.fromkeys(targets))[:MAX_TARGETS]
        if not targets:
            if transient:
                raise RouteError(Reply(451, (transient,)))
            if implicit:
                raise RouteError(Reply(550, (f"5.1.2 domain {domain} has no MX and no address record",)))
            raise RouteError(Reply(451, (f"4.4.4 no address found for the MX hosts of {domain}",)))
        return targets

    @staticmethod
    def _is_ip(host: str) -> bool:
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return False
