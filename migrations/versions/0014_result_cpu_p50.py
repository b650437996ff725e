"""result.cpu_p50_ms (change points on CPU time; issue 13 item 2)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 07:15:00.000000

The median CPU time of a result's timed runs (agent/bench.py: the process's CPU time per run),
which change-point detection reads instead of the wall-clock p50 when a series has it: on a
shared machine the wall p50 of one run moved by a median 28% from run to run, its CPU p50 by
8.5%. The covering index of the dashboards' aggregates (0010) is rebuilt with it, so the
Trends page's query still reads the index and not the blob-laden result rows.
"""
import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

OLD = ['run_id', 'device_name', 'precision', 'threads', 'ok', 'valid', 'p50_ms']


def upgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cpu_p50_ms', sa.Float(), nullable=True))
        batch_op.drop_index('ix_result_summary')
        batch_op.create_index('ix_result_summary', [*OLD, 'cpu_p50_ms'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.drop_index('ix_result_summary')
        batch_op.create_index('ix_result_summary', OLD, unique=False)
        batch_op.drop_column('cpu_p50_ms')
