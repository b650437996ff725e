"""devices bundles deployments

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 08:19:09.706366
"""
from alembic import op
import sqlalchemy as sa



revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('bundle',
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('version', sa.String(), nullable=False),
    sa.Column('digest', sa.String(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('precision', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('manifest_json', sa.String(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_bundle_name_version')
    )
    with op.batch_alter_table('bundle', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bundle_digest'), ['digest'], unique=True)
        batch_op.create_index(batch_op.f('ix_bundle_name'), ['name'], unique=False)

    op.create_table('deployment',
    sa.Column('device_name', sa.String(), nullable=False),
    sa.Column('operation', sa.String(), nullable=False),
    sa.Column('bundle_name', sa.String(), nullable=True),
    sa.Column('bundle_version', sa.String(), nullable=True),
    sa.Column('bundle_digest', sa.String(), nullable=True),
    sa.Column('state', sa.String(), nullable=False),
    sa.Column('bytes_sent', sa.Integer(), nullable=False),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('error', sa.String(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('deployment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_device_name'), ['device_name'], unique=False)

    op.create_table('device',
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('address', sa.String(), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('connection', sa.String(), nullable=False),
    sa.Column('groups', sa.JSON(), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('simulated', sa.Boolean(), nullable=False),
    sa.Column('agent_version', sa.String(), nullable=True),
    sa.Column('active_bundle', sa.String(), nullable=True),
    sa.Column('active_digest', sa.String(), nullable=True),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user', sa.String(), nullable=True),
    sa.Column('key_file', sa.String(), nullable=True),
    sa.Column('root', sa.String(), nullable=False),
    sa.Column('python', sa.String(), nullable=False),
    sa.Column('agent_python', sa.String(), nullable=True),
    sa.Column('env', sa.JSON(), nullable=False),
    sa.Column('facts', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_name'), ['name'], unique=True)

    


def downgrade() -> None:
    
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_name'))

    op.drop_table('device')
    with op.batch_alter_table('deployment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployment_device_name'))

    op.drop_table('deployment')
    with op.batch_alter_table('bundle', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bundle_name'))
        batch_op.drop_index(batch_op.f('ix_bundle_digest'))

    op.drop_table('bundle')
    
