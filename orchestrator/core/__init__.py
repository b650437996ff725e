"""Foundations every other package builds on: settings, database engines and sessions, the
SQLModel tables, errors, UTC times, target patterns, and the stdlib read path behind the fast
listings.

May import: nothing of EdgeFleet but itself.
"""
