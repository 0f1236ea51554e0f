"""
The demo model server: a small, deterministic, OpenAI-compatible server that
lmproxy's demo config, integration tests and benchmarks run behind the proxy.
``python -m lmproxy.demo --help`` tells how to run it.
"""
