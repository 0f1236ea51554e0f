"""
The demo model server: a small, deterministic, OpenAI-compatible server that
lmproxy's demo config, integration tests and benchmarks run behind the proxy.
C{python -m lmproxy.demo --help} tells how to run it.

Its answers are deterministic: a chat or text completion echoes the requested
model, the server's pid and the last user message (or the prompt), streamed
one word per Server-Sent Event when asked to; an embedding is a small vector
derived from a hash of its input.  C{/echo} and C{/bytes} move bulk data with
flow control for benchmarks, and every answer carries C{X-Demo-Pid} so that
tests can see which process answered.  Flags make it misbehave on purpose:
load slowly (C{--startup-delay}), exit on its own (C{--exit-after}), die in
the middle of a stream (C{--crash-mid-stream}), fail its health check
(C{--fail-health}) or leave a grandchild process behind
(C{--spawn-grandchild}).

The modules, each with one job:

 - L{lmproxy.demo.options}: the command line, parsed into
   L{DemoOptions<lmproxy.demo.options.DemoOptions>};
 - L{lmproxy.demo.answers}: the OpenAI-shaped answers (pure, no HTTP);
 - L{lmproxy.demo.streams}: Server-Sent Events on a schedule, bulk bodies
   with flow control;
 - L{lmproxy.demo.api}: the HTTP API, one C{twisted.web} resource;
 - L{lmproxy.demo.server}: listening, the listening line, exit-after, the
   grandchild, the request log;
 - L{lmproxy.demo.output}: the log events as plain lines on stdout/stderr;
 - L{lmproxy.demo.main}: the entry point, the only user of the global reactor.

Importing this package imports nothing else: C{python -m lmproxy.demo} pays
only for what it uses.
"""
