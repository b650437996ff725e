"""runs results leases telemetry

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 08:55:36.306282
"""
from alembic import op
import sqlalchemy as sa



revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('devicelease',
    sa.Column('device_name', sa.String(), nullable=False),
    sa.Column('holder', sa.String(), nullable=False),
    sa.Column('operation', sa.String(), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('device_name')
    )
    op.create_table('run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(), nullable=False),
    sa.Column('bundle_name', sa.String(), nullable=False),
    sa.Column('bundle_version', sa.String(), nullable=False),
    sa.Column('bundle_digest', sa.String(), nullable=False),
    sa.Column('targets', sa.String(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(), nullable=False),
    sa.Column('state', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_bundle_digest'), ['bundle_digest'], unique=False)
        batch_op.create_index(batch_op.f('ix_run_bundle_name'), ['bundle_name'], unique=False)

    op.create_table('telemetrysnapshot',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_name', sa.String(), nullable=False),
    sa.Column('taken_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('temp_c', sa.Float(), nullable=True),
    sa.Column('freq_mhz', sa.Float(), nullable=True),
    sa.Column('throttled_bits', sa.Integer(), nullable=True),
    sa.Column('throttle_flags', sa.JSON(), nullable=False),
    sa.Column('load_1m', sa.Float(), nullable=True),
    sa.Column('mem_available_mb', sa.Float(), nullable=True),
    sa.Column('disk_free_bytes', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('telemetrysnapshot', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_telemetrysnapshot_device_name'), ['device_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_telemetrysnapshot_taken_at'), ['taken_at'], unique=False)

    op.create_table('result',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('device_name', sa.String(), nullable=False),
    sa.Column('threads', sa.Integer(), nullable=True),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('error', sa.String(), nullable=True),
    sa.Column('simulated', sa.Boolean(), nullable=False),
    sa.Column('precision', sa.String(), nullable=True),
    sa.Column('n', sa.Integer(), nullable=True),
    sa.Column('mean_ms', sa.Float(), nullable=True),
    sa.Column('std_ms', sa.Float(), nullable=True),
    sa.Column('min_ms', sa.Float(), nullable=True),
    sa.Column('max_ms', sa.Float(), nullable=True),
    sa.Column('p50_ms', sa.Float(), nullable=True),
    sa.Column('p90_ms', sa.Float(), nullable=True),
    sa.Column('p95_ms', sa.Float(), nullable=True),
    sa.Column('p99_ms', sa.Float(), nullable=True),
    sa.Column('load_ms', sa.Float(), nullable=True),
    sa.Column('first_inference_ms', sa.Float(), nullable=True),
    sa.Column('peak_rss_mb', sa.Float(), nullable=True),
    sa.Column('steady_rss_mb', sa.Float(), nullable=True),
    sa.Column('model_size_mb', sa.Float(), nullable=True),
    sa.Column('telemetry_status', sa.String(), nullable=True),
    sa.Column('temp_c_min', sa.Float(), nullable=True),
    sa.Column('temp_c_max', sa.Float(), nullable=True),
    sa.Column('freq_mhz_min', sa.Float(), nullable=True),
    sa.Column('freq_mhz_max', sa.Float(), nullable=True),
    sa.Column('throttled_bits', sa.Integer(), nullable=True),
    sa.Column('throttle_flags', sa.JSON(), nullable=False),
    sa.Column('valid', sa.Boolean(), nullable=True),
    sa.Column('flags', sa.JSON(), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('latencies', sa.LargeBinary(), nullable=True),
    sa.Column('telemetry_samples', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_result_device_name'), ['device_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_result_run_id'), ['run_id'], unique=False)

    


def downgrade() -> None:
    
    with op.batch_alter_table('result', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_result_run_id'))
        batch_op.drop_index(batch_op.f('ix_result_device_name'))

    op.drop_table('result')
    with op.batch_alter_table('telemetrysnapshot', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_telemetrysnapshot_taken_at'))
        batch_op.drop_index(batch_op.f('ix_telemetrysnapshot_device_name'))

    op.drop_table('telemetrysnapshot')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_bundle_name'))
        batch_op.drop_index(batch_op.f('ix_run_bundle_digest'))

    op.drop_table('run')
    op.drop_table('devicelease')
    
