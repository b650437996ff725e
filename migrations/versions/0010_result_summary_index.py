"""result summary index (dashboards at 10M samples; issue 13 item 6)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 05:35:00.000000

A covering index of the columns the dashboards aggregate (run, device, precision, threads, ok,
valid, p50): the Trends page's series, the Compare page's version heatmap and the thread-count
filter then read the index, not the result rows, which carry the compressed raw latencies and
sampler rows (~2 kB a row). On bench/dashboard.py's 10M-sample DB (100,000 results) the
heatmap's query took half the CPU (92 -> 41 ms). Named for what it covers, not the feature,
so a concurrent revision (PostgreSQL byte counts, now 0009) is easy to tell apart.
"""
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.create_index('ix_result_summary', ['run_id', 'device_name', 'precision',
                                                    'threads', 'ok', 'valid', 'p50_ms'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.drop_index('ix_result_summary')
