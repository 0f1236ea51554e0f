"""
lmproxy: make many large-model servers look always-on on a machine that cannot
run them all at once.
"""
