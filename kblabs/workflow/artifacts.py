"""Step artifacts: what a step declares under `artifacts:` is copied, when the step
succeeds, to `<data dir>/workflow-artifacts/<runId>/<job>/<step>/<name>` and recorded in
`workflow_artifacts`, so it can be listed and downloaded per run after the workspace
has moved on.

A declaration's `source` is a file path (relative to the project root, which it must
not leave) or `outputs.<key>` (that output, as text, JSON for anything not a string).
A declared file that does not exist is reported in the run's log, not a failure.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from kblabs.errors import KbError
from kblabs.store import Store
from kblabs.store.tables import workflow_artifacts as artifacts
from kblabs.workflow.journal import iso, now
from kblabs.workflow.spec import StepSpec


def artifacts_root(data_dir: Path) -> Path:
    return data_dir / "workflow-artifacts"


def _content(source: str, outputs: dict[str, Any], cwd: Path) -> bytes | None:
    if source.startswith("outputs."):
        value: Any = outputs
        for part in source.removeprefix("outputs.").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else json.dumps(value, indent=2).encode()
    path = (cwd / source).resolve()
    if not path.is_relative_to(cwd.resolve()):
        raise KbError("ARTIFACT_OUTSIDE", f"artifact source {source!r} leaves the project", 400)
    return path.read_bytes() if path.is_file() else None


async def collect(
    store: Store,
    data_dir: Path,
    *,
    run_id: str,
    job_id: str,
    step_row_id: str,
    spec: StepSpec,
    outputs: dict[str, Any],
    cwd: Path,
) -> list[str]:
    """Store the step's declared artifacts; returns the names that were missing."""
    missing = []
    job_name = job_id.split(":", 1)[1]
    for name, declared in spec.artifacts.items():
        data = _content(declared.source, outputs, cwd)
        if data is None:
            missing.append(name)
            continue
        target = artifacts_root(data_dir) / run_id / job_name / spec.id / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        async with store.write() as conn:
            await conn.execute(
                insert(artifacts).values(
                    id=uuid.uuid4().hex,
                    run_id=run_id,
                    job_id=job_id,
                    step_id=step_row_id,
                    name=name,
                    path=str(target.relative_to(artifacts_root(data_dir))),
                    size=len(data),
                    digest="sha256:" + hashlib.sha256(data).hexdigest(),
                    created_at=now(),
                )
            )
    return missing


async def list_for_run(store: Store, run_id: str) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(artifacts)
                .where(artifacts.c.run_id == run_id)
                .order_by(artifacts.c.created_at)
            )
        ).mappings()
        return [
            {
                "id": row["id"],
                "name": row["name"],
                "jobId": row["job_id"],
                "stepId": row["step_id"],
                "size": row["size"],
                "digest": row["digest"],
                "createdAt": iso(row["created_at"]),
            }
            for row in rows
        ]


async def open_artifact(
    store: Store, data_dir: Path, run_id: str, artifact_id: str
) -> tuple[Path, str]:
    async with store.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(artifacts).where(
                        artifacts.c.run_id == run_id, artifacts.c.id == artifact_id
                    )
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise KbError("ARTIFACT_NOT_FOUND", f"no artifact {artifact_id} in run {run_id}", 404)
    path = artifacts_root(data_dir) / row["path"]
    if not path.is_file():
        raise KbError("ARTIFACT_NOT_FOUND", f"artifact {row['name']} is gone from disk", 404)
    return path, row["name"]
