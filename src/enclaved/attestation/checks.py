"""The verdict: one row per check, shared by every verifier.

Every verifier in :mod:`enclaved.attestation` reports what it looked at as
:class:`Check` rows - pass, fail or skipped, with a reason that names the
values compared - and never raises for a failed check. Whether a failed or
skipped row matters is the policy's decision (:mod:`.policy`), recorded in
``enforced``. Raising is reserved for the caller that turns a verdict into an
exception (:meth:`Verdict.raise_for_status`).

Check ids are dotted, stable, and documented in ``docs/verification.md``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Iterator
from typing import Any


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class Check:
    """One verification step and its outcome."""

    id: str
    status: Status
    reason: str = ""
    enforced: bool = True
    #: What kind of failure this is when it fails: "verification" (crypto,
    #: chains, bindings), "policy" (values outside what the policy allows).
    kind: str = "verification"

    @classmethod
    def passed(cls, id: str, reason: str = "", **kw: Any) -> Check:
        return cls(id, Status.PASS, reason, **kw)

    @classmethod
    def failed(cls, id: str, reason: str, **kw: Any) -> Check:
        return cls(id, Status.FAIL, reason, **kw)

    @classmethod
    def skipped(cls, id: str, reason: str, **kw: Any) -> Check:
        return cls(id, Status.SKIPPED, reason, **kw)

    @property
    def ok(self) -> bool:
        """True when this row does not block: it passed, or it is not enforced."""
        return self.status is Status.PASS or not self.enforced

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "enforced": self.enforced,
            "kind": self.kind,
            "reason": self.reason,
        }


@dataclasses.dataclass
class Verdict:
    """An ordered list of checks. Passes only if every enforced check passed.

    An enforced check that was skipped does not pass: a check we could not run
    is not a check that held. An empty verdict never passes.
    """

    checks: list[Check] = dataclasses.field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def extend(self, checks: Iterable[Check]) -> None:
        self.checks.extend(checks)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    def get(self, id: str) -> Check | None:
        for c in self.checks:
            if c.id == id:
                return c
        return None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A plain-text table for people: one row per check."""
        rows = [("check", "result", "enforced", "reason")]
        for c in self.checks:
            rows.append((c.id, c.status.value, "yes" if c.enforced else "no", c.reason))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        w2 = max(len(r[2]) for r in rows)
        return "\n".join(
            f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:<{w2}}  {r[3]}".rstrip() for r in rows
        )

    def raise_for_status(self) -> None:
        """Raise :class:`VerificationError` or :class:`PolicyError` if not ok.

        Verification failures win over policy failures: a forged quote is
        reported as forged even if its measurements are also unexpected.
        """
        from ..errors import PolicyError, VerificationError

        if self.ok:
            return
        if not self.checks:
            raise VerificationError("no checks were run", self)
        bad = self.failures
        ver = [c for c in bad if c.kind != "policy"]
        first = (ver or bad)[0]
        msg = f"attestation check {first.id} {first.status.value}: {first.reason}"
        if ver:
            raise VerificationError(msg, self)
        raise PolicyError(msg, self)
