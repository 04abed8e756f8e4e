"""Database triggers that make the audit trail append-only.

`audit_log` refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL). `audit_head` refuses DELETE
(and TRUNCATE) and any UPDATE that moves `seq` other than forward by one, so the head cannot be
rewound to hide a truncated tail. Someone with owner or superuser rights can still drop the
triggers; the hash chain (`gateway.audit.verify`) detects what they change afterwards.
"""

from __future__ import annotations

from sqlalchemy import Connection

_REFUSED = "audit trail is append-only"

SQLITE_INSTALL: tuple[str, ...] = (
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, '{_REFUSED}: UPDATE on audit_log refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, '{_REFUSED}: DELETE on audit_log refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN SELECT RAISE(ABORT, '{_REFUSED}: DELETE on audit_head refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_head_forward_only BEFORE UPDATE ON audit_head
WHEN NEW.id <> OLD.id OR NEW.seq < OLD.seq OR NEW.seq > OLD.seq + 1
BEGIN SELECT RAISE(ABORT, '{_REFUSED}: audit_head may only advance by one'); END""",
)

SQLITE_DROP: tuple[str, ...] = (
    "DROP TRIGGER IF EXISTS audit_log_no_update",
    "DROP TRIGGER IF EXISTS audit_log_no_delete",
    "DROP TRIGGER IF EXISTS audit_head_no_delete",
    "DROP TRIGGER IF EXISTS audit_head_forward_only",
)

# The messages are built with || rather than RAISE's % placeholders, so the DDL passes through
# DB-API drivers that treat % as a parameter marker.
POSTGRESQL_INSTALL: tuple[str, ...] = (
    f"""CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = '{_REFUSED}: ' || TG_OP || ' on ' || TG_TABLE_NAME || ' refused',
        ERRCODE = 'insufficient_privilege';
END
$fn$""",
    f"""CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.id <> OLD.id OR NEW.seq < OLD.seq OR NEW.seq > OLD.seq + 1 THEN
        RAISE EXCEPTION USING
            MESSAGE = '{_REFUSED}: audit_head may only advance by one',
            ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$fn$""",
    "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log",
    """CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
    "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
    """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()""",
    "DROP TRIGGER IF EXISTS audit_head_no_delete ON audit_head",
    """CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
    "DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_head",
    """CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()""",
    "DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_head",
    """CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only()""",
)

POSTGRESQL_DROP: tuple[str, ...] = (
    "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log",
    "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
    "DROP TRIGGER IF EXISTS audit_head_no_delete ON audit_head",
    "DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_head",
    "DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_head",
    "DROP FUNCTION IF EXISTS audit_head_forward_only()",
    "DROP FUNCTION IF EXISTS audit_refuse_change()",
)


def _statements(conn: Connection, sqlite: tuple[str, ...], pg: tuple[str, ...]) -> tuple[str, ...]:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return sqlite
    if dialect == "postgresql":
        return pg
    raise NotImplementedError(f"no append-only triggers for the {dialect} dialect")


def install_append_only_triggers(conn: Connection) -> None:
    """Create the triggers that refuse changes to audit_log and audit_head (idempotent)."""
    for statement in _statements(conn, SQLITE_INSTALL, POSTGRESQL_INSTALL):
        conn.exec_driver_sql(statement)


def drop_append_only_triggers(conn: Connection) -> None:
    """Remove those triggers (migration downgrade; tamper tests acting as a superuser)."""
    for statement in _statements(conn, SQLITE_DROP, POSTGRESQL_DROP):
        conn.exec_driver_sql(statement)


# Retention (revision 0701): a DELETE on audit_log is allowed only at or below the highest
# `through_seq` of a recorded purge, whose signed purge-bridge checkpoint the verifier checks;
# checkpoints and purges are themselves append-only.
_GUARDED = ("audit_checkpoint", "audit_purge")

# The head may also jump forward over records already inserted (a batch append locks the head,
# inserts its records, then advances once); it still never moves back or over missing records.
SQLITE_RETENTION_INSTALL: tuple[str, ...] = (
    "DROP TRIGGER IF EXISTS audit_head_forward_only",
    """CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
WHEN NEW.id <> OLD.id OR NEW.seq < OLD.seq OR (NEW.seq > OLD.seq + 1 AND
    (SELECT COUNT(*) FROM audit_log WHERE seq > OLD.seq AND seq <= NEW.seq) <> NEW.seq - OLD.seq)
BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: audit_head skips no record'); END""",
    "DROP TRIGGER IF EXISTS audit_log_no_delete",
    """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.seq > COALESCE((SELECT MAX(through_seq) FROM audit_purge), 0)
BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE on audit_log refused'); END""",
    *(
        statement
        for table in _GUARDED
        for statement in (
            f"""CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, '{_REFUSED}: UPDATE on {table} refused'); END""",
            f"""CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{_REFUSED}: DELETE on {table} refused'); END""",
        )
    ),
)

SQLITE_RETENTION_DROP: tuple[str, ...] = (
    "DROP TRIGGER IF EXISTS audit_head_forward_only",
    SQLITE_INSTALL[3],
    *(f"DROP TRIGGER IF EXISTS {t}_no_{op}" for t in _GUARDED for op in ("update", "delete")),
    "DROP TRIGGER IF EXISTS audit_log_no_delete",
    SQLITE_INSTALL[1],
)

POSTGRESQL_RETENTION_INSTALL: tuple[str, ...] = (
    """CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.id <> OLD.id OR NEW.seq < OLD.seq OR (NEW.seq > OLD.seq + 1 AND
        (SELECT COUNT(*) FROM audit_log WHERE seq > OLD.seq AND seq <= NEW.seq)
            <> NEW.seq - OLD.seq) THEN
        RAISE EXCEPTION USING
            MESSAGE = 'audit trail is append-only: audit_head skips no record',
            ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$fn$""",
    """CREATE OR REPLACE FUNCTION audit_log_delete_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF OLD.seq > COALESCE((SELECT MAX(through_seq) FROM audit_purge), 0) THEN
        RAISE EXCEPTION USING
            MESSAGE = 'audit trail is append-only: DELETE on audit_log refused',
            ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$fn$""",
    "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log",
    """CREATE TRIGGER audit_log_no_change BEFORE UPDATE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
    "DROP TRIGGER IF EXISTS audit_log_no_delete ON audit_log",
    """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_delete_guard()""",
    *(
        statement
        for table in _GUARDED
        for statement in (
            f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
            f"""CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()""",
            f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
            f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()""",
        )
    ),
)

POSTGRESQL_RETENTION_DROP: tuple[str, ...] = (
    POSTGRESQL_INSTALL[1],
    *(
        f"DROP TRIGGER IF EXISTS {t}_no_{op} ON {t}"
        for t in _GUARDED
        for op in ("change", "truncate")
    ),
    "DROP TRIGGER IF EXISTS audit_log_no_delete ON audit_log",
    "DROP FUNCTION IF EXISTS audit_log_delete_guard()",
    "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log",
    POSTGRESQL_INSTALL[3],
)


def install_retention_triggers(conn: Connection) -> None:
    """Guard checkpoints and purges; let audit_log rows go only below a recorded purge."""
    for statement in _statements(conn, SQLITE_RETENTION_INSTALL, POSTGRESQL_RETENTION_INSTALL):
        conn.exec_driver_sql(statement)


def drop_retention_triggers(conn: Connection) -> None:
    """Back to the revision-0001 triggers (migration downgrade; tamper tests)."""
    for statement in _statements(conn, SQLITE_RETENTION_DROP, POSTGRESQL_RETENTION_DROP):
        conn.exec_driver_sql(statement)
