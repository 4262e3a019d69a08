"""Setting a host up and checking it: `ajr install`, `ajr doctor`, and `ajr replay` (what AJR would
have done on a site's own logs, before it is let act)."""
