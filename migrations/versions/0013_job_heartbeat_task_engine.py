"""Job heartbeats, the job holding a lease, and procrastinate's schema on PostgreSQL

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 07:30:00.000000

Issue 14 items 3 and 5 (workers on several hosts):

- ``job.heartbeat_at``: the process running a job renews it every quarter of
  ``EDGEFLEET_JOB_TTL_S``; any worker, on any host, marks a running job whose heartbeat is
  older than that TTL ``interrupted`` (orchestrator.jobs.liveness). Before, only a process on
  the same host could tell (by the dead pid), so another host's crash left jobs "running".
- ``devicelease.job_id``: which job holds a device, so a job waiting for it says
  "waiting for pi3: bench #12".
- On PostgreSQL, the schema of procrastinate (the task engine that runs jobs there,
  orchestrator.jobs.engine), applied here so that it comes with `edgefleet db upgrade` under
  our migration lock like every other table, and each test database cloned from a migrated
  template has it. Taken from the installed procrastinate (pinned < 4 by the ``postgres``
  extra): a procrastinate release that changes its schema comes with a new revision here
  applying its migration scripts. SQLite runs jobs on our own threads: nothing to add there.
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def _procrastinate_schema() -> str:
    try:
        from procrastinate.schema import SchemaManager
    except ImportError as exc:  # psycopg without the rest of the extra
        raise RuntimeError("PostgreSQL needs the task engine too: pip install "
                           "'edgefleet[postgres]' (procrastinate)") from exc
    return SchemaManager.get_schema()


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('devicelease', schema=None) as batch_op:
        batch_op.add_column(sa.Column('job_id', sa.Integer(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        # The DBAPI cursor directly: the script is many statements, with '%' in it.
        bind.exec_driver_sql(_procrastinate_schema().replace('%', '%%'))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        bind.exec_driver_sql(
            "DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, "
            "procrastinate_jobs, procrastinate_workers CASCADE")
        functions = bind.exec_driver_sql(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = current_schema() "
            "AND p.proname LIKE 'procrastinate%%'").scalars().all()
        for function in functions:
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {function} CASCADE")
        bind.exec_driver_sql(
            "DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type, "
            "procrastinate_job_status CASCADE")
    with op.batch_alter_table('devicelease', schema=None) as batch_op:
        batch_op.drop_column('job_id')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
