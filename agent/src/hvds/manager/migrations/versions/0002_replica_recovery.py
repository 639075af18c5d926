"""Recovery under way: a replica's (views, VMs, failover state) and its VPG's

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("views")
        batch.add_column(sa.Column("recovery", sa.JSON(), nullable=True))
    with op.batch_alter_table("vpgs") as batch:
        batch.alter_column("test", new_column_name="recovery")


def downgrade() -> None:
    with op.batch_alter_table("vpgs") as batch:
        batch.alter_column("recovery", new_column_name="test")
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("recovery")
        batch.add_column(sa.Column("views", sa.JSON(), nullable=False, server_default="[]"))
