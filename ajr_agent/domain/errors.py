"""The exceptions AJR raises; every message names the thing that is wrong."""


class AjrError(Exception):
    """Base of every error AJR raises on purpose."""
