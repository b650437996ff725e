"""Injected faults, one file per scenario: real sshd hosts, a real server, real processes, and
the fault done for real (SIGKILL, SIGSTOP, a flooding program, a flipped byte, a hostile
request), so what was fixed stays fixed."""
