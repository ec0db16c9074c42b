"""Streamed replies: the draft a web turn writes (writer.py), its SQL (statements.py), the process's
live streams (hub.py), what a reader sees (reader.py) and the AI SDK's UI message stream (protocol.py)."""
