"""
Hot reload: apply a changed config to a running lmproxy without a restart
(C{kill -HUP}, C{POST /reload}, C{--watch-config}).
"""
