"""What each long-running process does, on ports only: the CLI builds the parts (bootstrap) and calls ``run``.

Unit tests drive these on in-memory fakes: the relay's standby/active lock, the worker's start-up,
reconcile and expiry schedule.
"""
