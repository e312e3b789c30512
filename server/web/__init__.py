"""The web edge: the editor console, sessions, and the public map's endpoints."""
