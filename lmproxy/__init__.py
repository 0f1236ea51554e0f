"""
lmproxy: make many large-model servers look always-on on a machine that cannot
run them all at once.
"""


def version() -> str:
    """lmproxy's version, as installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("lmproxy")
    except PackageNotFoundError:
        return "(not installed)"
