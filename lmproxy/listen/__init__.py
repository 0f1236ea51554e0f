"""
The listeners: a port per service that forwards TCP, and the OpenAI-compatible
port that routes each request by its model.  They get backends from an
L{lmproxy.interfaces.IBackends} and never start, stop or signal a process
themselves.

 - L{lmproxy.listen.sockets}: the listening sockets, opened with the standard
   library alone, before the config's parser and Twisted are imported.
 - L{lmproxy.listen.ports}: those sockets adopted into the reactor when the
   service tree starts, each accepting through an
   L{lmproxy.listen.acceptor.AcceptingPort} (which outlives running out of
   file descriptors).
 - L{lmproxy.listen.tcp}: per-service TCP forwarding (C{portforward} factories).
 - L{lmproxy.listen.openai}: the OpenAI port's routes (a Klein app).
 - L{lmproxy.listen.sites}: the twisted.web sites of both HTTP ports, with
   their request-body limits; L{lmproxy.listen.timeouts}: how slowly a client
   may send its request.
 - L{lmproxy.listen.jsonerrors}: the OpenAI port's JSON answers and errors.
 - L{lmproxy.listen.guard}: strangers refused on both HTTP ports (API keys,
   the management API's Host, the Origin of browser requests).
 - L{lmproxy.listen.httpforward}: forwarding one HTTP request to a backend and
   relaying its response.
"""
