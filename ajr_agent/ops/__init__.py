"""Setting a host up and checking it: `ajr install` and `ajr doctor`."""
