"""Model governance: register, approve, promote through the policy gate, roll back.

Every state change is audited in the gateway database in the same transaction as its record
there (Device row, Provenance); the registry change (a tag or the alias) is made only after the
gate has passed and is the last step, so a refused or failed promotion leaves the alias where it
was. Approvals live as version tags and count only when the audit trail holds the matching
`model-approved` record, so a tag typed into the MLflow UI approves nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, select, update

from fhir_mapping.audit_event import DETAIL_EVENT, DETAIL_MODEL_SHA256, details_of
from fhir_mapping.canonical import canonical_json
from gateway.audit.trail import AppendedRecord, append_provenance, read, record_event
from gateway.domain.errors import Forbidden, GatewayError, InvalidInput, ModelUnavailable
from gateway.domain.model import Actor, ModelIdentity
from gateway.persistence.tables import model_devices, tasks
from gateway.pipeline import Event, PipelineEvent
from scoring.contract import CONTRACT_TAG, InputContract
from scoring.device import device_id, governance_provenance, model_device
from scoring.policy import Approval, Criterion, Evidence, PromotionPolicy, evaluate, load_policy
from scoring.registry import SHA256_TAG, ModelRegistry, ResolvedModel

APPROVAL_PREFIX = "approval."
PROMOTED_AT = "promoted_at"
PROMOTED_BY = "promoted_by"
PROMOTION_PROVENANCE = "promotion_provenance"
MANAGING_ROLES = frozenset({"model-approver", "admin"})
REVIEW_DECISION_SYSTEM = "http://hitl-gateway.org/fhir/CodeSystem/review-decision"


class PromotionRefused(GatewayError):
    """The policy gate refused a promotion; `criteria` lists every criterion with its result."""

    code = "business-rule"

    def __init__(self, message: str, criteria: Sequence[Criterion]) -> None:
        super().__init__(message)
        self.criteria = tuple(criteria)


@dataclass(frozen=True, slots=True)
class GateReport:
    """The policy and every criterion evaluated for one version."""

    policy: PromotionPolicy
    evidence: Evidence
    criteria: tuple[Criterion, ...]

    @property
    def passed(self) -> bool:
        """True when every criterion holds."""
        return all(c.passed for c in self.criteria)

    @property
    def failing(self) -> tuple[Criterion, ...]:
        """The criteria that do not hold."""
        return tuple(c for c in self.criteria if not c.passed)


def approval_key(approver: str) -> str:
    # Tag keys allow [A-Za-z0-9_.- /]; a Practitioner reference fits as is after this mapping.
    return APPROVAL_PREFIX + "".join(c if c.isalnum() or c in "-_." else "_" for c in approver)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ModelGovernance:
    """Governance operations on one registry, audited in one gateway database."""

    def __init__(
        self,
        registry: ModelRegistry,
        engine: Engine,
        *,
        policy_dir: Path | None = None,
        alias: str = "production",
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.registry = registry
        self._engine = engine
        self._policy_dir = policy_dir
        self.alias = alias
        self._clock = clock

    # -- register ---------------------------------------------------------------------------

    def register(
        self,
        name: str,
        onnx_path: Path,
        contract: InputContract,
        metrics: Mapping[str, float],
        model_card: str,
        actor: Actor,
        *,
        artifacts: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelIdentity:
        """Register a version (metrics, model card, evaluation documents) and audit it."""
        self._require(actor, MANAGING_ROLES, f"registering a version of {name!r}")
        version = self.registry.register_onnx(
            name, onnx_path, contract, metrics, model_card, tags, artifacts
        )
        identity = self.identity(name, version)
        with self._engine.begin() as conn:
            self._audit(conn, Event.MODEL_REGISTERED, actor, identity, {"alias": ""})
        return identity

    # -- approve ----------------------------------------------------------------------------

    def approve(self, name: str, version: str, actor: Actor) -> Approval:
        """Record one approval by `actor` (model-approver role; one approval per person)."""
        identity = self.identity(name, version)
        policy = self.policy_for(identity.use_case)
        if policy.approver_role not in actor.roles:
            self._refuse(
                identity, actor, f"{actor.reference} lacks the {policy.approver_role} role"
            )
            raise Forbidden(f"approving needs the {policy.approver_role} role")
        if not actor.reference.startswith(("Practitioner/", "PractitionerRole/")):
            self._refuse(identity, actor, "the token names no person (fhirUser)")
            raise Forbidden("an approval needs the approver's identity (token claim fhirUser)")
        key = approval_key(actor.reference)
        if key in self.registry.version_tags(name, version):
            self._refuse(identity, actor, f"{actor.reference} has already approved this version")
            raise InvalidInput(
                f"{actor.reference} has already approved {name} version {version}",
                code="duplicate",
            )
        now = self._clock()
        with self._engine.begin() as conn:
            record = self._audit(conn, Event.MODEL_APPROVED, actor, identity, {"alias": ""})
            # Tagged inside the transaction: if the tag cannot be written, no audit record
            # claims an approval the registry does not show.
            value = {
                "approver": actor.reference,
                "roles": list(actor.roles),
                "sha256": identity.sha256,
                "at": now.isoformat(),
                "audit_event": record.resource_id,
                "token_id": actor.token_id,
            }
            self.registry.set_version_tags(name, version, {key: canonical_json(value)})
        return Approval(actor.reference, actor.roles, identity.sha256, True)

    # -- gate -------------------------------------------------------------------------------

    def policy_for(self, use_case: str) -> PromotionPolicy:
        """The promotion policy of a use case."""
        return load_policy(use_case, self._policy_dir)

    def evaluate(self, name: str, version: str) -> GateReport:
        """Evaluate the use case's policy for one version against all the evidence."""
        info = self.registry.version(name, version)
        identity = self.identity(name, version)
        policy = self.policy_for(identity.use_case)
        replaced = self.registry.alias_version(name, self.alias)
        if replaced == version:
            replaced = None
        with self._engine.connect() as conn:
            approvals = [
                self._approval(conn, text, identity)
                for key, text in sorted(info.tags.items())
                if key.startswith(APPROVAL_PREFIX)
            ]
            decisions = self._decisions(conn, policy.use_case, name, replaced) if replaced else {}
        evidence = Evidence(
            name=name,
            version=version,
            sha256=identity.sha256,
            use_case=identity.use_case,
            metrics=self.registry.metrics(name, version),
            artifacts=self.registry.artifact_names(name, version),
            approvals=approvals,
            replaced_version=replaced,
            replaced_decisions=decisions,
        )
        criteria = evaluate(policy, evidence)
        try:
            self.registry.verify(name, version)
            criteria.append(Criterion("onnx-sha256", True, "model file matches the registration"))
        except ModelUnavailable as exc:
            criteria.append(Criterion("onnx-sha256", False, exc.message))
        return GateReport(policy, evidence, tuple(criteria))

    # -- promote / rollback -----------------------------------------------------------------

    def promote(self, name: str, version: str, actor: Actor) -> GateReport:
        """Move the serving alias to `version` if the gate passes; PromotionRefused otherwise."""
        self._require(actor, MANAGING_ROLES, f"promoting {name!r}")
        report = self.evaluate(name, version)
        identity = self.identity(name, version)
        if not report.passed:
            failing = "; ".join(c.line() for c in report.failing)
            self._refuse(identity, actor, f"promotion refused: {failing}")
            raise PromotionRefused(
                f"promotion of {name} version {version} refused: "
                f"{len(report.failing)} criteria fail",
                report.criteria,
            )
        approvers = sorted(
            a.approver
            for a in report.evidence.approvals
            if a.audited and a.sha256 == identity.sha256 and report.policy.approver_role in a.roles
        )
        self._move_alias(
            identity,
            actor,
            approvers,
            Event.MODEL_PROMOTED,
            f"promoted under policy {Path(report.policy.source).name}: "
            + "; ".join(c.line() for c in report.criteria),
        )
        return report

    def rollback(self, name: str, actor: Actor, to_version: str | None = None) -> ModelIdentity:
        """Serve an earlier version that passed the gate before (default: the latest one)."""
        self._require(actor, MANAGING_ROLES, f"rolling back {name!r}")
        current = self.registry.alias_version(name, self.alias)
        promoted = [
            v
            for v in self.registry.versions(name)
            if PROMOTION_PROVENANCE in v.tags and v.version != current
        ]
        if to_version is not None:
            promoted = [v for v in promoted if v.version == to_version]
        if not promoted:
            what = f"version {to_version}" if to_version else "an earlier version"
            identity = self.identity(name, current) if current else None
            if identity is not None:
                self._refuse(identity, actor, f"rollback refused: {what} never passed the gate")
            raise InvalidInput(
                f"{name}: {what} was never promoted through the gate; nothing to roll back to",
                code="business-rule",
            )
        target = max(promoted, key=lambda v: (v.tags.get(PROMOTED_AT, ""), int(v.version)))
        identity = self.identity(name, target.version)
        try:
            self.registry.verify(name, target.version)
        except ModelUnavailable as exc:
            self._refuse(identity, actor, f"rollback refused: {exc.message}")
            raise
        approvers = sorted(
            json.loads(text)["approver"]
            for key, text in target.tags.items()
            if key.startswith(APPROVAL_PREFIX)
        )
        self._move_alias(
            identity,
            actor,
            approvers,
            Event.MODEL_ROLLED_BACK,
            f"rolled back from version {current} to {target.version}, promoted earlier under "
            f"Provenance/{target.tags[PROMOTION_PROVENANCE]}",
        )
        return identity

    def _move_alias(
        self,
        identity: ModelIdentity,
        actor: Actor,
        approvers: Sequence[str],
        event: Event,
        reason: str,
    ) -> None:
        name = identity.name
        current = self.registry.alias_version(name, self.alias)
        replaced = self.identity(name, current) if current and current != identity.version else None
        now = self._clock()
        provenance_id = str(uuid.uuid4())
        with self._engine.begin() as conn:
            if replaced is not None:
                self._store_device(conn, replaced, active=False, now=now)
            self._store_device(conn, identity, active=True, now=now)
            append_provenance(
                conn,
                governance_provenance(
                    provenance_id=provenance_id,
                    model=identity,
                    actor=actor.reference,
                    approvers=approvers,
                    replaced=replaced,
                    when=now,
                    reason=reason,
                ),
            )
            self._audit(
                conn,
                event,
                actor,
                identity,
                {
                    "alias": self.alias,
                    "approvers": ", ".join(approvers),
                    "replaced-version": replaced.version if replaced else "",
                    "gate": reason[:2000],
                },
                entities=(f"Device/{device_id(identity)}", f"Provenance/{provenance_id}"),
            )
            # Last step inside the transaction: a registry failure rolls the records back.
            self.registry.set_version_tags(
                name,
                identity.version,
                {
                    PROMOTED_AT: now.isoformat(),
                    PROMOTED_BY: actor.reference,
                    PROMOTION_PROVENANCE: provenance_id,
                },
            )
            self.registry.set_alias(name, self.alias, identity.version)

    # -- helpers ----------------------------------------------------------------------------

    def identity(self, name: str, version: str) -> ModelIdentity:
        tags = self.registry.version(name, version).tags
        contract_text = tags.get(CONTRACT_TAG)
        if contract_text is None:
            raise InvalidInput(f"{name} version {version} has no input contract")
        use_case = InputContract.from_json(contract_text).use_case
        return ModelIdentity(name, version, tags.get(SHA256_TAG, ""), use_case=use_case)

    def _approval(self, conn: Connection, text: str, identity: ModelIdentity) -> Approval:
        try:
            value = json.loads(text)
            approver = str(value["approver"])
            roles = tuple(str(r) for r in value.get("roles", ()))
            sha = str(value.get("sha256", ""))
            record_id = str(value.get("audit_event", ""))
        except (ValueError, KeyError, TypeError):
            return Approval("(unreadable approval tag)", (), "", False)
        audit = read(conn, "AuditEvent", record_id) if record_id else None
        audited = False
        if audit is not None:
            details = details_of(audit)
            agents = {str(a.get("who", {}).get("reference", "")) for a in audit.get("agent", ())}
            audited = (
                details.get(DETAIL_EVENT) == Event.MODEL_APPROVED.value
                and details.get(DETAIL_MODEL_SHA256) == identity.sha256
                and approver in agents
            )
        return Approval(approver, roles, sha, audited)

    @staticmethod
    def _decisions(conn: Connection, use_case: str, name: str, version: str) -> dict[str, int]:
        """Completed review decisions on Tasks scored by one version, counted by code."""
        from fhir_mapping.task import task_facts

        counts: dict[str, int] = {}
        rows = conn.execute(
            select(tasks.c.resource).where(
                tasks.c.use_case == use_case, tasks.c.status == "completed"
            )
        ).scalars()
        for text in rows:
            resource = json.loads(text)
            model = task_facts(resource).model
            if model is None or (model.name, model.version) != (name, version):
                continue
            for output in resource.get("output", ()):
                value = output.get("valueCodeableConcept", {})
                for coding in value.get("coding", ()):
                    if coding.get("system") == REVIEW_DECISION_SYSTEM:
                        code = str(coding.get("code", ""))
                        counts[code] = counts.get(code, 0) + 1
        return counts

    def _store_device(
        self, conn: Connection, identity: ModelIdentity, *, active: bool, now: datetime
    ) -> None:
        resource = model_device(identity, active=active, tracking_uri=self.registry.tracking_uri)
        row_id = device_id(identity)
        existing = conn.execute(
            select(model_devices.c.version_id).where(model_devices.c.id == row_id)
        ).scalar_one_or_none()
        version_id = 1 if existing is None else int(existing) + 1
        resource["meta"] = {"versionId": str(version_id), "lastUpdated": now.isoformat()}
        values = {
            "status": resource["status"],
            "version_id": version_id,
            "last_updated": now,
            "resource": canonical_json(resource),
        }
        if existing is None:
            conn.execute(
                model_devices.insert().values(
                    id=row_id,
                    model_name=identity.name,
                    model_version=identity.version,
                    model_sha256=identity.sha256,
                    use_case=identity.use_case,
                    **values,
                )
            )
        else:
            conn.execute(update(model_devices).where(model_devices.c.id == row_id).values(values))

    def _require(self, actor: Actor, roles: frozenset[str], what: str) -> None:
        if not roles & set(actor.roles):
            raise Forbidden(f"{what} needs one of the roles {sorted(roles)}")

    def _refuse(self, identity: ModelIdentity, actor: Actor, why: str) -> None:
        with self._engine.begin() as conn:
            self._audit(conn, Event.MODEL_REFUSED, actor, identity, {}, outcome="4", desc=why)

    def _audit(
        self,
        conn: Connection,
        kind: Event,
        actor: Actor,
        identity: ModelIdentity,
        detail: Mapping[str, str],
        *,
        entities: tuple[str, ...] = (),
        outcome: str = "0",
        desc: str = "",
    ) -> AppendedRecord:
        return record_event(
            conn,
            PipelineEvent(
                kind=kind,
                actor=actor,
                occurred_at=self._clock(),
                outcome=outcome,
                outcome_desc=desc[:4000],
                model=identity,
                entities=entities or (f"Device/{device_id(identity)}",),
                detail=dict(detail),
            ),
        )


def verified(registry: ModelRegistry, name: str, alias: str) -> ResolvedModel | None:
    """The version served under `alias`, or None when nothing verifiable is there."""
    try:
        return registry.resolve(name, alias)
    except ModelUnavailable:
        return None
