"""job.heartbeat_expires_at (a job's death judged by its own process's TTL)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 14:30:00.000000

Each heartbeat writes when it lapses: now + the beating process's EDGEFLEET_JOB_TTL_S. The
sweep compared heartbeat_at with the *sweeper's* TTL instead, so a worker or server started
with a shorter TTL marked the live jobs of a process with a longer one interrupted, deleted
their leases and stopped them. Jobs of processes older than this revision (NULL) are still
judged by the sweeper's TTL.
"""
import sqlalchemy as sa
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_expires_at', sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_expires_at')
