"""Schedules: `catch_up` (none | latest), what the scheduler leader does with cron fires
missed while no process ran it.

Revision ID: 0006_schedule_catch_up
Revises: 0005_logs
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_schedule_catch_up"
down_revision = "0005_logs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_schedules", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("catch_up", sa.String(length=16), server_default="none", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("workflow_schedules", schema=None) as batch_op:
        batch_op.drop_column("catch_up")
