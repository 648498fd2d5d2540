"""The judgement of one verification pass (see `infrastructure.audit.verify`): chains per
aggregate, the rolling hash against the signed checkpoints, and what was found.

A version that skips ahead opens a hole; a version that shows up later fills it
(`reordered`); what is left at the end was `deleted`, placed by the gaps in the
notification ids where only one fits. An event whose hash recomputes but whose mac does
not was written without the audit MAC key: `inserted` if it continues its chain exactly,
re-labelled `altered` when the next version turns out to link to the original.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from application.ledger import Ledger
from domain.chained import ChainedAggregate
from domain.integrity import DEFAULT_MAC_KID, GENESIS_HASH, chain_hash, mac_matches
from infrastructure.audit.checkpoints import ROLLING_GENESIS, Checkpoint, fold
from infrastructure.audit.signing import PublicKeys
from infrastructure.audit.verify_checkpoints import CheckpointPair

FINDINGS_MAX: Final = 10_000
# Gaps in notification ids remembered to place a deleted event (a rolled-back write
# leaves gaps too, so a gap alone proves nothing).
GAPS_MAX: Final = 100_000
CANDIDATES_SHOWN_MAX: Final = 10
# Removed events named from the event index, per finding: enough to act on.
INDEX_NAMED_MAX: Final = 100

# (low, high] -> (notification id, aggregate id, version) the event index lists there.
IndexLookup = Callable[[int, int], list[tuple[int, object, int]]]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    aggregate_id: str | None
    version: int | None
    notification_id: int | None
    detail: str


@dataclass(slots=True)
class _Link:
    """The last event seen of an aggregate."""

    version: int
    hash: str | None  # None: it could not be decoded
    notification_id: int
    suspect: int | None = None  # index of an "inserted" finding on this event


@dataclass(slots=True)
class _Hole:
    """Versions low..high of an aggregate not seen yet: deleted, unless they come later."""

    low: int
    high: int
    after_id: int  # notification id of the version before the hole (0: none)
    before_id: int  # notification id of the version after it, which revealed the hole
    silent: bool  # revealed outside the reported time window


@dataclass
class TimeWindow:
    since: datetime | None
    until: datetime | None

    def covers(self, moment: datetime | None) -> bool:
        if moment is None:
            return True
        return (self.since is None or moment >= self.since) and (
            self.until is None or moment < self.until
        )


@dataclass
class StoreAudit:
    """The state of one pass: chains per aggregate, the rolling hash, what was found."""

    ledger: Ledger
    mac_keys: Mapping[str, bytes]  # kid -> key: events name the kid that sealed them
    keys: PublicKeys
    window: TimeWindow
    index: IndexLookup | None = None
    chains: dict[UUID, _Link] = field(default_factory=dict)
    holes: dict[UUID, list[_Hole]] = field(default_factory=dict)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    rolling_hash: str = ROLLING_GENESIS
    rolling_from: int = 0  # the rolling hash is checked up to here
    last_id: int = 0
    events: int = 0
    checkpoints: int = 0
    last_checkpoint: int | None = None
    deleted_at: list[int] = field(default_factory=list)  # checkpointed ids now absent
    deleted_reported: set[int] = field(default_factory=set)

    def report(
        self, kind: str, aggregate_id: object, version: int | None, nid: int | None, detail: str
    ) -> int | None:
        self.counts[kind] += 1
        if len(self.findings) >= FINDINGS_MAX:
            return None
        aggregate = None if aggregate_id is None else str(aggregate_id)
        self.findings.append(Finding(kind, aggregate, version, nid, detail))
        return len(self.findings) - 1

    # Events ----------------------------------------------------------------------------

    def event(self, nid: int, stored: Any) -> None:
        if nid > self.last_id + 1 and len(self.gaps) < GAPS_MAX:
            self.gaps.append((self.last_id + 1, nid - 1))
        self.last_id = nid
        self.events += 1
        aggregate_id, version = stored.originator_id, stored.originator_version
        try:
            event = self.ledger.mapper.to_domain_event(stored)
            if not isinstance(event, ChainedAggregate.Event):
                raise TypeError(f"{stored.topic} is not a chained event")
            recomputed = chain_hash(event.chain_record())
        except Exception as error:  # whatever the bytes were changed into
            self.report("altered", aggregate_id, version, nid, f"cannot be decoded: {error}")
            self._link(aggregate_id, version, None, nid, None)
            return
        self.rolling_hash = fold(self.rolling_hash, event.hash)
        shown = self.window.covers(event.timestamp)
        suspect: int | None = None
        if recomputed != event.hash:
            if shown:
                detail = f"stored hash {event.hash} but its fields hash to {recomputed}"
                self.report("altered", aggregate_id, version, nid, detail)
        elif not self._mac_holds(event) and shown:
            prior = self.chains.get(aggregate_id)
            fits = (prior is None and version == 1 and event.previous_hash == GENESIS_HASH) or (
                prior is not None
                and version == prior.version + 1
                and event.previous_hash == prior.hash
            )
            kind, how = ("inserted", "a new event") if fits else ("forged_mac", "an event")
            kid = event.mac_kid or DEFAULT_MAC_KID
            known = "" if kid in self.mac_keys else ", a key not configured"
            detail = (
                f"its mac (key {kid!r}{known}) does not match: {how} written without "
                "the audit MAC key"
            )
            suspect = self.report(kind, aggregate_id, version, nid, detail)
        self._link(aggregate_id, version, event.hash, nid, event.previous_hash, shown, suspect)

    def _mac_holds(self, event: ChainedAggregate.Event) -> bool:
        key = self.mac_keys.get(event.mac_kid or DEFAULT_MAC_KID)
        return key is not None and mac_matches(key, event.hash, event.mac)

    def _link(
        self,
        aggregate_id: UUID,
        version: int,
        event_hash: str | None,
        nid: int,
        previous_hash: str | None,
        shown: bool = True,
        suspect: int | None = None,
    ) -> None:
        """Check the event's place in its aggregate's chain; `previous_hash` None: the
        event could not be decoded (already reported), so only its version counts."""
        prior = self.chains.get(aggregate_id)
        expected = 1 if prior is None else prior.version + 1
        if version < expected:
            self._late(aggregate_id, version, nid, shown)
            return
        if version > expected:
            after_id = 0 if prior is None else prior.notification_id
            self.holes.setdefault(aggregate_id, []).append(
                _Hole(expected, version - 1, after_id, nid, not shown)
            )
        elif previous_hash is not None:
            linked = GENESIS_HASH if prior is None else prior.hash
            if linked is not None and previous_hash != linked:
                self._broken(aggregate_id, version, nid, prior, shown)
        self.chains[aggregate_id] = _Link(version, event_hash, nid, suspect)

    def _broken(
        self, aggregate_id: UUID, version: int, nid: int, prior: _Link | None, shown: bool
    ) -> None:
        if prior is not None and prior.suspect is not None:
            # The event before was re-sealed (new hash, no key): this one still links to
            # the original. That event was altered, not inserted.
            old = self.findings[prior.suspect]
            detail = f"re-sealed without the audit MAC key: version {version} links elsewhere"
            self.findings[prior.suspect] = Finding(
                "altered", old.aggregate_id, old.version, old.notification_id, detail
            )
            self.counts[old.kind] -= 1
            self.counts["altered"] += 1
        elif shown:
            detail = f"previous_hash is not the hash of version {version - 1}"
            self.report("broken_link", aggregate_id, version, nid, detail)

    def _late(self, aggregate_id: UUID, version: int, nid: int, shown: bool) -> None:
        holes = self.holes.get(aggregate_id, [])
        for index, hole in enumerate(holes):
            if hole.low <= version <= hole.high:
                pieces = [
                    _Hole(low, high, hole.after_id, hole.before_id, hole.silent)
                    for low, high in ((hole.low, version - 1), (version + 1, hole.high))
                    if low <= high
                ]
                holes[index : index + 1] = pieces
                if shown:
                    detail = (
                        f"stored after version {hole.high + 1} "
                        f"(notification {hole.before_id}): the log's order was changed"
                    )
                    self.report("reordered", aggregate_id, version, nid, detail)
                return
        if shown:
            detail = "a version seen before, again"
            self.report("reordered", aggregate_id, version, nid, detail)

    def missing_between(self, low: int, high: int) -> list[int]:
        """Notification ids absent from the store strictly between `low` and `high`."""
        found: list[int] = []
        for first, last in self.gaps:
            if last <= low or first >= high:
                continue
            found.extend(range(max(first, low + 1), min(last, high - 1) + 1))
            if len(found) > CANDIDATES_SHOWN_MAX:
                break
        return found

    def finish_chains(self) -> None:
        for aggregate_id, holes in self.holes.items():
            for hole in holes:
                if hole.silent:
                    continue
                candidates = self.missing_between(hole.after_id, hole.before_id)
                versions = (
                    f"version {hole.low}"
                    if hole.low == hole.high
                    else f"versions {hole.low}-{hole.high}"
                )
                place = (
                    f"its notification id was {candidates[0]}"
                    if len(candidates) == 1
                    else f"it was between notifications {hole.after_id} and {hole.before_id}"
                )
                nid = candidates[0] if len(candidates) == 1 else hole.before_id
                detail = f"{versions} missing before version {hole.high + 1}: {place}"
                for version in range(hole.low, min(hole.high, hole.low + 100) + 1):
                    self.report("deleted", aggregate_id, version, nid, detail)
                if len(candidates) == 1:
                    self.deleted_reported.add(nid)
        for nid in self.deleted_at:
            if nid not in self.deleted_reported:
                self._deleted_at(nid)

    def _deleted_at(self, nid: int) -> None:
        detail = f"the event at notification {nid}, which a signed checkpoint covered, is gone"
        named = self.index(nid - 1, nid) if self.index is not None else []
        if named:
            _, aggregate_id, version = named[0]
            self.report("deleted", aggregate_id, version, nid, detail + " (named by the index)")
        else:
            self.report("deleted", None, None, nid, detail)

    # Checkpoints -----------------------------------------------------------------------

    def checkpoint(self, pair: CheckpointPair, *, beyond_head: bool = False) -> None:
        """Judge a checkpoint once every event up to its notification id was folded;
        `beyond_head`: the store ends before it (`truncated` reports that)."""
        self.checkpoints += 1
        self.last_checkpoint = pair.notification_id
        shown = self.window.covers(pair.time())
        for problem in pair.problems(self.keys):
            if shown:
                self.report(problem.kind, None, None, pair.notification_id, problem.detail)
        trusted = pair.trusted(self.keys)
        if trusted is None:
            return
        if beyond_head:
            return
        if trusted.rolling_hash != self.rolling_hash and shown:
            self._mismatch(trusted)
        # Later checkpoints are judged on their own interval.
        self.rolling_hash = trusted.rolling_hash
        self.rolling_from = trusted.notification_id

    def _mismatch(self, trusted: Checkpoint) -> None:
        low, high = self.rolling_from, trusted.notification_id
        # Ids after the last event folded are absent too (the next event is above `high`).
        tail = range(max(low, self.last_id) + 1, high + 1)
        missing = self.missing_between(low, high + 1) + list(tail[:CANDIDATES_SHOWN_MAX])
        shown = ", ".join(str(i) for i in missing[:CANDIDATES_SHOWN_MAX])
        gaps = f"; notification ids absent in that range: {shown}" if missing else ""
        detail = (
            f"the events after notification {low} up to {high} do not fold to the signed "
            f"rolling hash: one was altered, deleted, inserted or reordered{gaps}"
        )
        self.report("checkpoint_mismatch", None, None, high, detail)
        if high in missing:
            self.deleted_at.append(high)

    def truncated(self, beyond: list[CheckpointPair]) -> None:
        signed = [p for p in beyond if p.trusted(self.keys) is not None]
        if not signed:
            return
        highest = signed[-1]
        if not self.window.covers(highest.time()):
            return
        detail = (
            f"the store ends at notification {self.last_id}, but a signed checkpoint covers "
            f"up to {highest.notification_id}: the events after {self.last_id} were removed"
        )
        self.report("truncated", None, None, highest.notification_id, detail)
        named = self.index(self.last_id, highest.notification_id) if self.index else []
        for nid, aggregate_id, version in named:
            detail = "removed from the store's tail (named by the event index)"
            self.report("truncated", aggregate_id, version, nid, detail)
