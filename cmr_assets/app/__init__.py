"""Labelling web app for cardiologists (ranking and single-image pages); see docs/labelling_app.md.

Modules: `accounts` (roster), `tasks` (DuckDB task snapshot), `service` (queues, tickets, durable
submissions), `web` (Starlette app), `cli` (`serve-labelling`, `annotators`).
"""
