"""64-bit byte counts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 01:00:00.000000

Byte counts were 32-bit INTEGER columns (issue 14): SQLite stores any INTEGER in 64 bits, so
nobody noticed, but on PostgreSQL a Pi with 79 GB free failed every telemetry insert with
"integer out of range". BIGINT on every column that holds a number of bytes. SQLite's batch
mode rewrites the tables (its INTEGER already holds 64 bits; the declared type now says so).
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# (table, column, nullable) of every byte count.
COLUMNS = [
    ('bundle', 'size_bytes', False),
    ('dataset', 'size_bytes', False),
    ('deployment', 'bytes_sent', False),
    ('telemetrysnapshot', 'disk_free_bytes', True),
]


def upgrade() -> None:
    for table, column, nullable in COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column, existing_type=sa.Integer(), type_=sa.BigInteger(),
                                  existing_nullable=nullable)


def downgrade() -> None:
    for table, column, nullable in reversed(COLUMNS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column, existing_type=sa.BigInteger(), type_=sa.Integer(),
                                  existing_nullable=nullable)
