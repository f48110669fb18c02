"""Triggers without a CI server: git hooks, a branch watcher, a webhook receiver, a schedule.

Each one ends in the same place, `conveyor run` for one commit, with
CONVEYOR_TRIGGER naming what started it so the run record says so.
"""
