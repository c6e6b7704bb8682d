"""Errors the CLI turns into one clear line: bad input (exit 2) and does-not-fit (exit 1)."""


class SharderInputError(ValueError):
    """Bad input from the user: unknown name, malformed spec, impossible sizes. Exit 2."""

    exit_code = 2


class DoesNotFitError(RuntimeError):
    """The question was well formed and the answer is 'it does not fit'. Exit 1."""

    exit_code = 1


def closest_names(name: str, choices, n: int = 3) -> list[str]:
    """The catalog names nearest to `name`, for 'did you mean' messages."""
    import difflib

    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.4)
    if not hits:
        hits = [c for c in lowered if name.lower()[:4] in c][:n]
    return [lowered[h] for h in hits]
