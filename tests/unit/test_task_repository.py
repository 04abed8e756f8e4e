"""The versioned Task store on SQLite and PostgreSQL: history, search, optimistic locking."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from fhir_mapping.task import build_review_task, change_status, model_device_reference
from gateway.domain.errors import NotFound, VersionConflict
from gateway.domain.priority import Priority
from gateway.persistence.tables import task_history
from gateway.tasks import TaskRepository
from tests.unit.fhir.samples import MODEL, STUDY_UID, WHEN, gateway_engine, score, study


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    with gateway_engine(database_url) as engine:
        yield engine


def _task(task_id: str = "t1") -> dict[str, Any]:
    return build_review_task(
        task_id=task_id,
        study=study(),
        score=score(),
        priority=Priority.URGENT,
        authored_on=WHEN,
        model_device_ref=model_device_reference(MODEL),
    )


def test_create_read_update_keeps_history(engine: Engine) -> None:
    repo = TaskRepository()
    with engine.begin() as conn:
        created = repo.create(conn, _task())
    assert created["meta"]["versionId"] == "1"
    with engine.begin() as conn:
        updated = repo.update(conn, "t1", change_status(created, "in-progress", WHEN), 1)
    assert updated["meta"]["versionId"] == "2"
    with engine.connect() as conn:
        assert repo.read(conn, "t1") == updated
        assert repo.read_version(conn, "t1", 1) == created
        count = conn.execute(select(func.count()).select_from(task_history)).scalar_one()
        assert count == 2
        with pytest.raises(NotFound):
            repo.read(conn, "absent")


def test_stale_version_is_a_conflict_and_changes_nothing(engine: Engine) -> None:
    repo = TaskRepository()
    with engine.begin() as conn:
        created = repo.create(conn, _task())
        repo.update(conn, "t1", change_status(created, "in-progress", WHEN), 1)
    with pytest.raises(VersionConflict), engine.begin() as conn:
        repo.update(conn, "t1", change_status(created, "cancelled", WHEN), 1)
    with engine.connect() as conn:
        current = repo.read(conn, "t1")
    assert (current["meta"]["versionId"], current["status"]) == ("2", "in-progress")
    with pytest.raises(NotFound), engine.begin() as conn:
        repo.update(conn, "absent", created, 1)


def test_search_and_open_task_lookup(engine: Engine) -> None:
    repo = TaskRepository()
    with engine.begin() as conn:
        first = repo.create(conn, _task("t1"))
        repo.create(conn, _task("t2"))
        repo.update(conn, "t1", change_status(first, "cancelled", WHEN), 1)
    with engine.connect() as conn:
        assert [t["id"] for t in repo.search(conn, statuses=["requested"])] == ["t2"]
        assert len(repo.search(conn, statuses=["requested", "cancelled"])) == 2
        assert len(repo.search(conn, count=1)) == 1
        found = repo.find_open_for_study(conn, STUDY_UID, MODEL.use_case)
        assert found is not None
        assert found["id"] == "t2"
        assert repo.find_open_for_study(conn, STUDY_UID, "other-use-case") is None


def test_two_racing_updates_exactly_one_wins(engine: Engine) -> None:
    repo = TaskRepository()
    with engine.begin() as conn:
        created = repo.create(conn, _task())
    barrier = threading.Barrier(2)
    results: list[str] = []
    lock = threading.Lock()

    def reviewer(status: str) -> None:
        barrier.wait()
        try:
            with engine.begin() as conn:
                repo.update(conn, "t1", change_status(created, status, WHEN), 1)
            outcome = "won"
        except VersionConflict:
            outcome = "conflict"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=reviewer, args=(s,)) for s in ("in-progress", "accepted")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["conflict", "won"]
    with engine.connect() as conn:
        assert repo.read(conn, "t1")["meta"]["versionId"] == "2"
        count = conn.execute(select(func.count()).select_from(task_history)).scalar_one()
    assert count == 2
