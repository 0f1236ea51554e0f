"""
The listeners: a port per service that forwards TCP (``portforward``
factories), and the OpenAI-compatible port that routes each request by its
model.  They get backends from an L{lmproxy.interfaces.IBackends} and never
start, stop or signal a process themselves.
"""
