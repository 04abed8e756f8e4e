"""Reviewer credentials with expiry (re-credentialing) and who may act on which review Task.

A reviewer claims or decides only while a current credential names them and the role the Task's
pool needs; a secondary review must be done by someone other than the first reviewer. A refusal is
Forbidden (403); the review service audits it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from fhir_mapping.review_tasks import first_reviewer, task_pool
from gateway.audit.trail import record_event
from gateway.auth.tokens import Principal
from gateway.domain.errors import Forbidden, InvalidInput
from gateway.domain.model import Actor
from gateway.persistence.tables import reviewer_credentials
from gateway.pipeline import Event, PipelineEvent
from gateway.settings import Settings

# Which token role may act on a Task waiting in which pool.
POOL_ROLES: Mapping[str, frozenset[str]] = {
    "reviewer": frozenset({"reviewer"}),
    "backup-reviewer": frozenset({"reviewer", "secondary-reviewer"}),
    "secondary-reviewer": frozenset({"secondary-reviewer"}),
}


class CredentialExpired(Forbidden):
    """The reviewer's credential has expired or was never granted (403)."""

    code = "security"


@dataclass(frozen=True, slots=True)
class Credential:
    """One reviewer's credential."""

    practitioner: str
    roles: tuple[str, ...]
    valid_until: datetime
    granted_by: str
    granted_at: datetime


def grant(
    conn: Connection,
    *,
    practitioner: str,
    roles: Sequence[str],
    valid_until: datetime,
    granted_by: str,
    now: datetime,
) -> Credential:
    """Record (or renew) a reviewer's credential, audited (caller's transaction)."""
    if not practitioner.startswith(("Practitioner/", "PractitionerRole/")):
        raise InvalidInput("a credential names a Practitioner/<id> or PractitionerRole/<id>")
    unknown = set(roles) - {"reviewer", "secondary-reviewer"}
    if not roles or unknown:
        raise InvalidInput(f"credential roles must be reviewer/secondary-reviewer, not {unknown}")
    if valid_until.tzinfo is None:
        raise InvalidInput("valid_until needs a time zone")
    conn.execute(
        delete(reviewer_credentials).where(reviewer_credentials.c.practitioner == practitioner)
    )
    values: dict[str, Any] = {
        "practitioner": practitioner,
        "roles": " ".join(sorted(set(roles))),
        "valid_until": valid_until,
        "granted_by": granted_by,
        "granted_at": now,
    }
    conn.execute(insert(reviewer_credentials).values(values))
    record_event(
        conn,
        PipelineEvent(
            kind=Event.REVIEWER_CREDENTIALED,
            actor=Actor(reference=granted_by if "/" in granted_by else "Device/hitl-gateway",
                        display=granted_by),
            occurred_at=now,
            entities=(practitioner,),
            detail={"roles": values["roles"], "valid-until": valid_until.isoformat()},
        ),
    )  # fmt: skip
    return Credential(practitioner, tuple(values["roles"].split()), valid_until, granted_by, now)


def credential_of(conn: Connection, practitioner: str) -> Credential | None:
    """The stored credential of a reviewer, if any."""
    row = conn.execute(
        select(reviewer_credentials).where(reviewer_credentials.c.practitioner == practitioner)
    ).first()
    if row is None:
        return None
    return Credential(row.practitioner, tuple(row.roles.split()), row.valid_until,
                      row.granted_by, row.granted_at)  # fmt: skip


def all_credentials(conn: Connection) -> list[Credential]:
    """Every stored credential, by practitioner."""
    rows = conn.execute(select(reviewer_credentials).order_by(reviewer_credentials.c.practitioner))
    return [Credential(r.practitioner, tuple(r.roles.split()), r.valid_until, r.granted_by,
                       r.granted_at) for r in rows]  # fmt: skip


def check_reviewer(
    conn: Connection,
    task: Mapping[str, Any],
    principal: Principal,
    settings: Settings,
    now: datetime,
) -> None:
    """Forbidden unless the principal may act on this Task now (role, pool, credential)."""
    pool = task_pool(task)
    allowed_roles = POOL_ROLES.get(pool, frozenset({"reviewer"}))
    roles = set(principal.roles) & allowed_roles
    if not roles:
        raise Forbidden(f"a Task in the {pool} pool needs one of the roles {sorted(allowed_roles)}")
    reference = principal.actor.reference
    if pool == settings.review.secondary_pool and reference == first_reviewer(task):
        raise Forbidden("a secondary review must be done by a reviewer other than the first")
    if not settings.review.credentials_required or not reference:
        return
    credential = credential_of(conn, reference)
    if credential is None:
        raise CredentialExpired(f"{reference} holds no reviewer credential")
    if credential.valid_until <= now:
        raise CredentialExpired(
            f"the reviewer credential of {reference} expired at "
            f"{credential.valid_until.isoformat()}"
        )
    if not roles & set(credential.roles):
        raise CredentialExpired(f"the credential of {reference} does not cover {sorted(roles)}")
