"""Log records: what the log sink persists and GET /api/v1/logs reads.

Revision ID: 0005_logs
Revises: 0004_workflows
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_logs"
down_revision = "0004_workflows"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_records",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("level_no", sa.Integer(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("module", sa.String(length=256), nullable=True),
        sa.Column("plugin", sa.String(length=256), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("trace_id", sa.String(length=128), nullable=True),
        sa.Column("execution_id", sa.String(length=128), nullable=True),
        sa.Column("namespace_id", sa.String(length=64), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_records")),
    )
    with op.batch_alter_table("log_records", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_log_records_execution_id"), ["execution_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_log_records_request_id"), ["request_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_log_records_trace_id"), ["trace_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_log_records_ts"), ["ts"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("log_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_log_records_ts"))
        batch_op.drop_index(batch_op.f("ix_log_records_trace_id"))
        batch_op.drop_index(batch_op.f("ix_log_records_request_id"))
        batch_op.drop_index(batch_op.f("ix_log_records_execution_id"))

    op.drop_table("log_records")
