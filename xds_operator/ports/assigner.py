"""Listener ports the control plane assigns: a listener whose spec names no port gets one from a range
(serve --listener-ports FIRST-LAST), one pool per protocol (a UDP and a TCP listener may share a number).

The rules (README, "Assigned ports"):
- A port, once assigned, stays the listener's while its VirtualService exists: deleting other
  VirtualServices frees their ports and moves nobody.
- A port the VirtualService's status already reports (`recorded`: status.listeners[].port, or the
  directory mode's state file) is honoured, by every replica and after restarts; two records of one
  port (a hand-edited status): the older VirtualService keeps it.
- Before any status reports it, a listener's port is a function of the objects alone, whatever order
  a replica received them in: each listener starts at a preferred port (a hash of namespace, name,
  listener and protocol) and takes the first free one from there, older VirtualServices first (the
  conflict order: creationTimestamp, then namespace/name). A listener that arrives late but is older
  takes over a port a younger one holds as long as no status reports that younger one's port yet (it
  moves on, as it would have had the older one arrived first). With `settled_when_assigned` (one
  process, nothing to agree with: directory mode) every assigned port counts as recorded at once.
- Assigned ports never take a port a VirtualService names explicitly (same protocol). An explicit
  port named later on an assigned one: a port no status reports yet moves; a reported one stays, and
  the cache's conflict rules (older wins) decide on the proxies both select.
- A full range leaves the listener waiting, reported (`waiting`), until a port is freed (oldest first).

Pure, no I/O. A change costs what it touches: a byte per port (taken or free) finds the next free
one with memchr, and only the listeners of the VirtualService placed (and those it displaces) move.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from xds_operator.api import FieldError, Key, Protocol, ValidationError, VirtualService, has_port, pb, protocol_of
from xds_operator.api.model import port_of

FLAG = "--listener-ports"
ListenerRef = tuple[str, Protocol]  # (listener name, protocol) within one VirtualService
Recorded = Mapping[ListenerRef, int]
Age = tuple[bool, int, str, str, int]  # the conflict order (xds/cache.py Translated.age), then the listener's index
Rank = tuple[int, bool, int, str, str, int]  # (0 holding its recorded port / 1 not, *age): lower wins a port
# A listener arriving late that is older than this many listeners without a record searches port by port
# (or, in a full range, the youngest gives way) instead of comparing itself with each of them.
MAX_EXACT_DISPLACEMENT = 512
MAX_RECORDED = 64  # status.listeners items looked at (a VirtualService has at most 64 listeners)


@dataclass(frozen=True)
class PortRange:
    """FIRST-LAST, inclusive."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_port_range(text: str) -> PortRange:
    """`FIRST-LAST` (decimal ports, 1..65535, FIRST <= LAST); ValueError saying what is wrong."""
    first, dash, last = text.partition("-")
    if not dash or not (first.isascii() and first.isdigit() and last.isascii() and last.isdigit()):
        raise ValueError(f"{text!r} is not a port range; write FIRST-LAST, e.g. 20000-29999")
    low, high = int(first), int(last)
    if not 1 <= low <= 65535 or not 1 <= high <= 65535:
        raise ValueError(f"{text!r}: ports are 1..65535")
    if low > high:
        raise ValueError(f"{text!r}: the first port is above the last")
    return PortRange(low, high)


def recorded_from_status(status: Any) -> dict[ListenerRef, int]:
    """The ports a VirtualService's status reports per listener (status.listeners[]: name, protocol, port).
    Anything malformed is ignored (the status is ours, but anyone allowed to write it could write anything)."""
    listeners = status.get("listeners") if isinstance(status, Mapping) else None
    recorded: dict[ListenerRef, int] = {}
    if not isinstance(listeners, list):
        return recorded
    for item in listeners[:MAX_RECORDED]:
        if not isinstance(item, Mapping):
            continue
        name, protocol, port = item.get("name"), item.get("protocol"), item.get("port")
        if not isinstance(name, str) or protocol not in ("UDP", "TCP"):
            continue
        if isinstance(port, int) and not isinstance(port, bool):
            recorded[(name, "UDP" if protocol == "UDP" else "TCP")] = port
    return recorded


def missing_port_errors(vs: VirtualService) -> list[FieldError]:
    """Without a range every listener must name its port: one error per listener that does not."""
    return [
        FieldError(
            f"spec.listeners[{index}].{protocol_of(listener).lower()}.port",
            f"required: this control plane assigns no ports (serve without {FLAG}); name a port, or run serve "
            f"with {FLAG} FIRST-LAST",
        )
        for index, listener in enumerate(vs.spec.listeners)
        if not has_port(listener)
    ]


@dataclass(eq=False)
class _Item:
    """One listener that wants an assigned port."""

    key: Key
    listener: str
    protocol: Protocol
    age: Age
    preferred: int  # offset in the range where its search starts
    recorded: int | None = None  # the port its status (or the state file) reports
    port: int | None = None
    slot: Rank | None = None  # its entry in its pool's `displaceable` while it holds an unrecorded port

    def rank(self) -> Rank:
        return (0 if self.port is not None and self.port == self.recorded else 1, *self.age)


@dataclass(eq=False)
class _Service:
    vs: VirtualService
    items: dict[ListenerRef, _Item] = field(default_factory=dict)
    named: list[tuple[Protocol, int]] = field(default_factory=list)  # its explicit ports
    result: VirtualService | None = None  # `vs` with its assigned ports, made on demand


class _Pool:
    """One protocol's range: which ports are held (and by whom), named explicitly, free."""

    def __init__(self, ports: PortRange) -> None:
        self.ports = ports
        self.taken = bytearray(ports.size)  # 1: held by an assigned listener, or named by a VirtualService
        self.free = ports.size
        self.holders: dict[int, _Item] = {}
        self.named: Counter[int] = Counter()  # explicit ports in the range → how many listeners name them
        self.displaceable: list[Rank] = []  # sorted ranks of the items holding a port no record reports
        self.holders_by_slot: dict[Rank, _Item] = {}  # and those items
        self.waiting: dict[int, _Item] = {}  # items without a port (the range is full), by id

    def _mark(self, port: int) -> None:
        offset = port - self.ports.first
        now = 1 if (port in self.holders or self.named[port] > 0) else 0
        self.free += self.taken[offset] - now
        self.taken[offset] = now

    def first_free(self, offset: int) -> int | None:
        found = self.taken.find(0, offset)
        if found < 0:
            found = self.taken.find(0, 0, offset)
        return None if found < 0 else self.ports.first + found

    def hold(self, port: int, item: _Item, settled: bool) -> None:
        item.port = port
        self.holders[port] = item
        self._mark(port)
        self.waiting.pop(id(item), None)
        if settled:
            item.recorded = port
        if item.port != item.recorded:
            self.displace_later(item)

    def displace_later(self, item: _Item) -> None:
        """The item holds a port no record reports: an older one arriving late may take it."""
        item.slot = item.rank()
        bisect.insort(self.displaceable, item.slot)
        self.holders_by_slot[item.slot] = item

    def release(self, item: _Item) -> None:
        self.settle(item)
        if item.port is not None and self.holders.get(item.port) is item:
            del self.holders[item.port]
            self._mark(item.port)
        item.port = None

    def settle(self, item: _Item) -> None:
        """The item is no longer displaceable (released, or its port is recorded now)."""
        if item.slot is not None:
            index = bisect.bisect_left(self.displaceable, item.slot)
            del self.displaceable[index]
            del self.holders_by_slot[item.slot]
            item.slot = None

    def name(self, port: int) -> None:
        if port in self.ports:
            self.named[port] += 1
            self._mark(port)

    def unname(self, port: int) -> None:
        if port in self.ports:
            self.named[port] -= 1
            if self.named[port] <= 0:
                del self.named[port]
            self._mark(port)


class PortAssigner:
    """Assigns ports to the listeners that name none; `place` and `remove` say which VirtualServices changed."""

    def __init__(self, ports: PortRange | None, *, settled_when_assigned: bool = False) -> None:
        self.ports = ports
        self._settled = settled_when_assigned
        self._pools: dict[Protocol, _Pool] = {} if ports is None else {"UDP": _Pool(ports), "TCP": _Pool(ports)}
        self._services: dict[Key, _Service] = {}
        self._touched: set[Key] = set()
        self._evicted: list[_Item] = []

    # -- input -------------------------------------------------------------------------------

    def place(self, vs: VirtualService, recorded: Recorded | None = None) -> set[Key]:
        """Take a (new generation of a) VirtualService; returns the VirtualServices whose ports changed
        (itself included). Without a range, a listener without a port is a ValidationError (naming the flag)."""
        if self.ports is None:
            errors = missing_port_errors(vs)
            if errors:
                raise ValidationError(errors)
            self._services[vs.key] = _Service(vs)  # served as it is
            return {vs.key}
        recorded = recorded or {}
        self._touched = set()
        service = self._services.get(vs.key)
        if service is None:
            service = self._services[vs.key] = _Service(vs)
        if not (service.vs.same_content(vs) and service.vs.created == vs.created):
            self._touched.add(vs.key)  # a new spec: a new result (a status event alone keeps the one made)
        service.vs = vs
        named = [(protocol_of(listener), port_of(listener)) for listener in vs.spec.listeners if has_port(listener)]
        before, service.named = service.named, named
        for protocol, port in named:  # named first, so a port named before and now is never free in between
            self._name(protocol, port, vs.key)
        for protocol, port in before:
            self._pools[protocol].unname(port)
        wanted: dict[ListenerRef, int] = {
            (listener.name, protocol_of(listener)): index
            for index, listener in enumerate(vs.spec.listeners)
            if not has_port(listener)
        }
        for ref in [ref for ref in service.items if ref not in wanted]:
            self._drop(service.items.pop(ref))
        age = _age(vs)
        for ref, index in wanted.items():
            self._want(service, ref, (*age, index), recorded.get(ref))
        self._settle_all()
        return self._touched | {vs.key}

    def remove(self, key: Key) -> set[Key]:
        """A VirtualService is gone: its ports are free (for those waiting, oldest first)."""
        service = self._services.pop(key, None)
        self._touched = {key}
        if service is None or self.ports is None:
            return self._touched
        for item in service.items.values():
            self._drop(item)
        for protocol, port in service.named:
            self._pools[protocol].unname(port)
        self._settle_all()
        return self._touched

    # -- output ------------------------------------------------------------------------------

    def result(self, key: Key) -> VirtualService | None:
        """The VirtualService with its assigned ports in its spec (itself if it names every port); None while
        a listener waits for a port, or if it is unknown."""
        service = self._services.get(key)
        if service is None:
            return None
        if service.result is None:
            service.result = self._filled(service)
        return service.result

    def waiting(self, key: Key) -> str | None:
        """Why a VirtualService is not served (a listener waits for a free port), or None."""
        service = self._services.get(key)
        if service is None or self.ports is None:
            return None
        waiting = [item for item in service.items.values() if item.port is None]
        if not waiting:
            return None
        names = ", ".join(f"{item.listener} ({item.protocol})" for item in waiting)
        return (
            f"no free port for listener {names}: every port of {self.ports} (serve {FLAG}) is assigned or named "
            "by another VirtualService; it gets one as soon as one is freed (or widen the range)"
        )

    def assignments(self) -> dict[Key, dict[ListenerRef, int]]:
        """Every assigned port, by VirtualService (what directory mode persists)."""
        found: dict[Key, dict[ListenerRef, int]] = {}
        for key, service in self._services.items():
            ports = {ref: item.port for ref, item in service.items.items() if item.port is not None}
            if ports:
                found[key] = ports
        return found

    def ports_of(self, key: Key) -> dict[ListenerRef, int]:
        """The ports assigned to one VirtualService's listeners (none if it is unknown)."""
        service = self._services.get(key)
        if service is None:
            return {}
        return {ref: item.port for ref, item in service.items.items() if item.port is not None}

    def counts(self) -> dict[str, int]:
        """Assigned and free ports per protocol, and listeners waiting (for /debug and tests)."""
        counts: dict[str, int] = {}
        for protocol, pool in self._pools.items():
            counts[f"{protocol.lower()}_assigned"] = len(pool.holders)
            counts[f"{protocol.lower()}_free"] = pool.free
            counts[f"{protocol.lower()}_waiting"] = len(pool.waiting)
        return counts

    # -- the work ----------------------------------------------------------------------------

    def _filled(self, service: _Service) -> VirtualService | None:
        if not service.items:
            return service.vs
        if any(item.port is None for item in service.items.values()):
            return None
        spec = pb.VirtualServiceSpec()
        spec.CopyFrom(service.vs.spec)
        for listener in spec.listeners:
            item = service.items.get((listener.name, protocol_of(listener)))
            if item is not None and item.port is not None:
                block: pb.UdpListener | pb.TcpListener = getattr(listener, listener.WhichOneof("protocol") or "")
                block.port = item.port
        return replace(service.vs, spec=spec, assigned=frozenset(ref[0] for ref in service.items))

    def _name(self, protocol: Protocol, port: int, key: Key) -> None:
        """A VirtualService names `port`: a listener holding it without a record (or of this one) moves."""
        pool = self._pools[protocol]
        pool.name(port)
        holder = pool.holders.get(port)
        if holder is not None and (holder.port != holder.recorded or holder.key == key):
            self._evict(holder)

    def _want(self, service: _Service, ref: ListenerRef, age: Age, recorded: int | None) -> None:
        item = service.items.get(ref)
        pool = self._pools[ref[1]]
        if recorded is not None and recorded not in pool.ports:
            recorded = None  # outside the range (the range changed): assigned anew
        if item is None:
            name, protocol = ref
            item = service.items[ref] = _Item(service.vs.key, name, protocol, age, _preferred(service.vs, ref, pool))
            item.recorded = recorded
            self._seat(item)
            return
        if item.age != age:  # a new creationTimestamp (directory mode): its rank changes, its port stays
            pool.settle(item)
            item.age = age
            if item.port is not None and item.port != item.recorded:
                pool.displace_later(item)
        if recorded is None or recorded == item.recorded:
            return
        item.recorded = recorded
        if item.port == recorded:
            pool.settle(item)  # what it holds is on record now: no one displaces it any more
        elif item.port is not None:  # another port on record (another replica's, before ours was written)
            pool.release(item)
            self._touched.add(item.key)
            self._seat(item)
        # (a waiting item tries its recorded port when it is seated)

    def _drop(self, item: _Item) -> None:
        pool = self._pools[item.protocol]
        pool.release(item)
        pool.waiting.pop(id(item), None)

    def _evict(self, item: _Item) -> None:
        self._pools[item.protocol].release(item)
        self._touched.add(item.key)
        self._evicted.append(item)

    def _seat(self, item: _Item) -> None:
        """Give an item a port: its recorded one if it may have it, else the first free from its preferred
        port that no older one holds; or make it wait."""
        pool = self._pools[item.protocol]
        self._touched.add(item.key)
        recorded = item.recorded
        if recorded is not None and not self._named_by_own(item, recorded):
            holder = pool.holders.get(recorded)
            if holder is None or holder.rank() > (0, *item.age):
                if holder is not None:
                    self._evict(holder)
                pool.hold(recorded, item, self._settled)
                pool.settle(item)
                return
        rank: Rank = (1, *item.age)
        younger = len(pool.displaceable) - bisect.bisect_right(pool.displaceable, rank)
        free = pool.first_free(item.preferred)  # O(memchr)
        run = None if free is None else (free - pool.ports.first - item.preferred) % pool.ports.size
        if not younger:
            port = free  # no younger one to displace: the common case
        elif run is not None and (run <= younger or younger > MAX_EXACT_DISPLACEMENT):
            port = self._walk(pool, item, rank)  # port by port, as far as the next free one
        elif younger <= MAX_EXACT_DISPLACEMENT:
            port = self._first_free_or_younger(pool, item, rank)  # each younger one's port, if fewer
        else:
            # Full, and thousands without a record (no status written for a long while): the youngest gives
            # way, rather than a cascade of displacements each searching the whole range. The same listeners
            # hold ports as if the older had come first; which port each holds may then depend on the order.
            youngest = pool.holders_by_slot[pool.displaceable[-1]]
            port = youngest.port
            self._evict(youngest)
        if port is None:
            pool.waiting[id(item)] = item
            return
        pool.hold(port, item, self._settled)

    def _first_free_or_younger(self, pool: _Pool, item: _Item, rank: Rank) -> int | None:
        """What `_walk` finds, from the few younger listeners without a record rather than port by port."""
        size, first = pool.ports.size, pool.ports.first
        free = pool.first_free(item.preferred)
        best = None if free is None else (free - first - item.preferred) % size
        chosen: _Item | None = None
        for slot in pool.displaceable[bisect.bisect_right(pool.displaceable, rank) :]:
            holder = pool.holders_by_slot[slot]
            if holder.port is None or pool.named[holder.port]:
                continue
            distance = (holder.port - first - item.preferred) % size
            if best is None or distance < best:
                best, chosen = distance, holder
        if best is None:
            return None
        if chosen is not None:
            self._evict(chosen)
        return first + (item.preferred + best) % size

    def _walk(self, pool: _Pool, item: _Item, rank: Rank) -> int | None:
        """From the preferred port on: the first that is free or held by a younger listener without a record."""
        size, first, taken, holders = pool.ports.size, pool.ports.first, pool.taken, pool.holders
        for offset in itertools.chain(range(item.preferred, size), range(item.preferred)):
            if not taken[offset]:
                return first + offset
            holder = holders.get(first + offset)
            # A displaceable holder carries its rank in `slot` (None once its port is recorded).
            if holder is not None and holder.slot is not None and holder.slot > rank and not pool.named[first + offset]:
                self._evict(holder)
                return first + offset
        return None

    def _named_by_own(self, item: _Item, port: int) -> bool:
        service = self._services.get(item.key)
        return service is not None and (item.protocol, port) in service.named

    def _settle_all(self) -> None:
        """Seat what was displaced, then (ports having been freed) those waiting, oldest first."""
        while True:
            while self._evicted:
                self._seat(self._evicted.pop())
            seated = False
            for pool in self._pools.values():
                if pool.waiting and pool.free > 0:
                    oldest = min(pool.waiting.values(), key=lambda item: item.age)
                    del pool.waiting[id(oldest)]
                    self._seat(oldest)
                    seated = True
            if not seated and not self._evicted:
                break
        for key in self._touched:
            service = self._services.get(key)
            if service is not None:
                service.result = None


def _age(vs: VirtualService) -> tuple[bool, int, str, str]:
    return (vs.created is None, vs.created or 0, vs.namespace, vs.name)


def _preferred(vs: VirtualService, ref: ListenerRef, pool: _Pool) -> int:
    """Where a listener's search starts: a hash of who it is, the same in every process."""
    digest = hashlib.blake2b(f"{vs.namespace}/{vs.name}\0{ref[0]}\0{ref[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % pool.ports.size


def assigned_ports(vs: VirtualService) -> Iterable[tuple[str, int]]:
    """(listener name, port) of the listeners whose port was assigned."""
    for listener in vs.spec.listeners:
        if listener.name in vs.assigned:
            yield listener.name, port_of(listener)
