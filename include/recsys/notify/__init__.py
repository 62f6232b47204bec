"""Slack: message blocks, sending, Airflow callbacks, and the approval request text."""
