"""datasets

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 09:00:00.000000

Evaluation datasets (issue 5): content-addressed like bundles, versioned per name.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dataset',
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('version', sa.String(), nullable=False),
    sa.Column('digest', sa.String(), nullable=False),
    sa.Column('format', sa.String(), nullable=False),
    sa.Column('sampling_rate', sa.Integer(), nullable=True),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('manifest_json', sa.String(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_dataset_name_version')
    )
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_digest'), ['digest'], unique=True)
        batch_op.create_index(batch_op.f('ix_dataset_name'), ['name'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_name'))
        batch_op.drop_index(batch_op.f('ix_dataset_digest'))

    op.drop_table('dataset')
