"""
What lmproxy assumes of Twisted beyond its public API, in one place.

Everything else in lmproxy uses public, documented Twisted, Klein and treq API
only.  Each assumption made here has its own test in C{tests/test_compat.py},
so that a Twisted upgrade that breaks one fails a test, not production.  One
module per part of Twisted, so that importing one costs nothing of the other:

  - L{lmproxy.compat.web}: answering a twisted.web request before its body
    has arrived (L{lmproxy.compat.web.EarlyAnswerRequest}).
  - L{lmproxy.compat.process}: which children Twisted's process support will
    reap (L{lmproxy.compat.process.twisted_children}), so that lmproxy, a
    child subreaper, reaps only the others; spawning a child in a session of
    its own without the C{setsid} command's exec
    (L{lmproxy.compat.process.spawn_in_session}).
  - L{lmproxy.compat.tcp}: a paused TCP transport leaves its socket to
    another descriptor (L{lmproxy.compat.tcp.socket_of}, for the relay of
    the per-service ports).
"""
