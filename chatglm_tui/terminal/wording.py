"""Numbers in the words users read: counts with the right plural ("1 token", "2 tokens") and file sizes.

Leaf module (standard library only): the engine's and the server's messages, the commands and the chat app
all say counts the same way.
"""

from __future__ import annotations

# Decimal units, as disks, downloads and the Hugging Face Hub state sizes ("3.9 GB").
_SIZE_UNITS = (("GB", 10**9), ("MB", 10**6), ("kB", 10**3))


def counted(count: int, noun: str) -> str:
    """`count` and `noun`, plural unless the count is exactly one: "1 token", "0 tokens", "2,048 tokens"."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def human_size(size: int) -> str:
    """A byte count as people read it, to one decimal: "3.9 GB", "16.7 MB", "1.5 kB", "512 bytes"."""
    for unit, scale in _SIZE_UNITS:
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return counted(size, "byte")
