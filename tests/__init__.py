"""lmproxy's tests."""
