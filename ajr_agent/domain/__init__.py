"""The plain data and the pure policy: jobs, events, actions, settings, and every decision. Imports nothing else of AJR."""
