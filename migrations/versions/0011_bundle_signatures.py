"""bundle signatures and signing keys (issue 15)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 07:20:00.000000

A bundle's SSHSIG signature over its name, version and manifest digest, who signed it and when
(the device verifies it against its own pinned keys), and the signing keys' public halves. No
private key is stored: each is a 0600 file under EDGEFLEET_HOME/keys.
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signingkey',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('public_key', sa.String(), nullable=False),
    sa.Column('fingerprint', sa.String(), nullable=False),
    sa.Column('encrypted', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('signingkey', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signingkey_name'), ['name'], unique=True)
    with op.batch_alter_table('bundle', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signature', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('signed_by', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('signed_fingerprint', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('signed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bundle', schema=None) as batch_op:
        batch_op.drop_column('signed_at')
        batch_op.drop_column('signed_fingerprint')
        batch_op.drop_column('signed_by')
        batch_op.drop_column('signature')
    with op.batch_alter_table('signingkey', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signingkey_name'))
    op.drop_table('signingkey')
