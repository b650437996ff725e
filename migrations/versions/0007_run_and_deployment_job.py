"""runs and deployments name their job

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 02:00:00.000000

A run or deployment is created with the job that makes it (issue 11), so whoever recovers a
crashed job (a restarted server, the next CLI command) finalizes them as interrupted instead of
leaving them "running" or "pending" forever.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('run', 'deployment'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('job_id', sa.Integer(), nullable=True))
            batch_op.create_index(batch_op.f(f'ix_{table}_job_id'), ['job_id'], unique=False)


def downgrade() -> None:
    for table in ('deployment', 'run'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f'ix_{table}_job_id'))
            batch_op.drop_column('job_id')
