"""Paired sites authenticate by client certificate, not by token (decision 0018)

A peer's row keeps the fingerprint of the certificate this site signed for it, and where the
key and certificate this site presents to it are kept; the peer tokens are gone. Sites paired
before this must pair again.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("peers") as batch:
        batch.drop_column("token")
        batch.add_column(
            sa.Column("fingerprint", sa.String(length=64), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("credentials", sa.String(length=1000), nullable=False, server_default="")
        )
        batch.create_index("ix_peers_fingerprint", ["fingerprint"])
    op.execute("DELETE FROM tokens WHERE role = 'peer'")


def downgrade() -> None:
    with op.batch_alter_table("peers") as batch:
        batch.drop_index("ix_peers_fingerprint")
        batch.drop_column("credentials")
        batch.drop_column("fingerprint")
        batch.add_column(
            sa.Column("token", sa.String(length=200), nullable=False, server_default="")
        )
