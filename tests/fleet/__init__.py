"""Tests against real OpenSSH sshd test hosts on loopback (see sshd.py, conftest.py)."""
