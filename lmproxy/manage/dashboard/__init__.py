"""Static files of the management dashboard (package data)."""
