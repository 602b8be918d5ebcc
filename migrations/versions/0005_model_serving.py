"""per-model serving settings

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 04:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'model_serving',
        sa.Column('owner', sa.String(length=100), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('max_batch_size', sa.Integer(), nullable=True),
        sa.Column('batch_timeout_ms', sa.Float(), nullable=True),
        sa.Column('max_queued_rows', sa.Integer(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('owner', 'name', name=op.f('pk_model_serving')),
    )


def downgrade() -> None:
    op.drop_table('model_serving')
