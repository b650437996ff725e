"""result threads index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 10:10:00.000000

``SELECT DISTINCT threads FROM result`` (the thread-count filters of the Compare and Trends
pages) scanned the whole result table, whose rows carry the compressed raw latencies and
telemetry samples: ~13 ms at 10,000 results, growing with history. The index answers it alone.
"""
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_result_threads'), ['threads'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_result_threads'))
