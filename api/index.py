"""Vercel entrypoint: the serverless ASGI app, which Vercel serves for every path of the deployment."""

from __future__ import annotations

# Vercel's FastAPI preset picks this file as the entrypoint because it binds a top-level `app`,
# and routes every request to it with the public path intact; see docs/deploy.md. Importing
# builds the app without connecting to the database.
from app.lambda_handler import app, services

__all__ = ["app", "services"]
