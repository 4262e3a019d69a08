"""Answers for people and programs, read from the state database: the API's models and the queries behind the CLI, the cockpit and the metrics."""
