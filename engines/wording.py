"""Counts in messages, in the right number: "1 frame", "2 frames"."""


def count_of(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` with ``noun``, or its ``plural`` [noun + "s"] unless the count is one."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
