"""Work as jobs: the queue and its states (``queue``), parameter checks (``params``), what each
kind does (``execute``), a running job's progress and cancel flag (``context``), server worker
threads and the scheduler (``runner``), CLI work recorded as a job (``tracker``), schedules.

May import: ``measure`` and everything below it.
"""
