"""browser sessions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:40:00.000000

Server-side browser sessions (issue 11): logout invalidates the session on the server, not
only in the browser that held the cookie.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('browsersession',
    sa.Column('id_hash', sa.String(), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id_hash')
    )
    with op.batch_alter_table('browsersession', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_browsersession_token_id'), ['token_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('browsersession', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_browsersession_token_id'))
    op.drop_table('browsersession')
