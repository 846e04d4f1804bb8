"""Scheduling: APScheduler 3.x set-up and the job functions it stores (APScheduler lives here)."""
