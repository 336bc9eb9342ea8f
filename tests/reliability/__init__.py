"""Reliability and security: faults, crashes, hostile input, secrets, concurrency (issue 10)."""
