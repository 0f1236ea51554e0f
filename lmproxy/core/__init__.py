"""
The core: the life of every model service.  The resource ledger and eviction
planning, one lifecycle per service, measured resources, the supervisor that
schedules them, and the processes they run (readiness checks, the watchdog).

This package imports nothing at import time: the watchdog child runs as
C{python -m lmproxy.core.reaper} on the standard library alone.
"""
