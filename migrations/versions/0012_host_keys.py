"""host keys in the database (issue 14 item 4)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 07:10:00.000000

Trusted SSH host keys move from each process's EDGEFLEET_HOME/known_hosts into the shared
database, so a worker on another host checks a device against the keys `devices trust`
recorded anywhere. An existing known_hosts file keeps working: it is still read after the
database (orchestrator.transport.hostkeys), and `devices trust` copies what it confirms into
this table. Public keys only.
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hostkey',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entry', sa.String(), nullable=False),
    sa.Column('key_type', sa.String(), nullable=False),
    sa.Column('key_base64', sa.String(), nullable=False),
    sa.Column('fingerprint', sa.String(), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('entry', 'key_type', name='uq_host_key_entry_type')
    )
    with op.batch_alter_table('hostkey', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hostkey_entry'), ['entry'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hostkey', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hostkey_entry'))
    op.drop_table('hostkey')
