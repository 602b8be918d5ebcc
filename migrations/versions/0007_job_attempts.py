"""job attempts and dispatch tracking

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 06:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('dispatched_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('dispatch_count', sa.Integer(), server_default='0',
                                      nullable=False))
    op.create_table(
        'job_attempts',
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('worker', sa.String(length=300), nullable=False),
        sa.Column('host_key', sa.String(length=200), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('outcome', sa.String(length=20), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('epoch_at_start', sa.Integer(), nullable=False),
        sa.Column('resumed_from_epoch', sa.Integer(), nullable=True),
        sa.Column('warnings', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'],
                                name=op.f('fk_job_attempts_job_id_jobs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('job_id', 'number', name=op.f('pk_job_attempts')),
    )


def downgrade() -> None:
    op.drop_table('job_attempts')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('dispatch_count')
        batch_op.drop_column('dispatched_at')
        batch_op.drop_column('attempt')
