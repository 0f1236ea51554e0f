"""
twistd plugin ``lmproxy``: ``twistd -n lmproxy -c config.jsonc``.

This file is imported whenever twistd lists its plugins, so it names the
implementing module by string and imports nothing of lmproxy itself.
"""

from twisted.application.service import ServiceMaker

lmproxy = ServiceMaker(
    "lmproxy",
    "lmproxy.tap",
    "Start model servers on demand, evict idle ones and proxy their ports.",
    "lmproxy",
)
