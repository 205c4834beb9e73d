"""Text a user gives (prompts, chat lines, --system, --stop, template and text files): UTF-8, or a clear error.

The policy: cpuinfer reads text as UTF-8 whatever the locale, and refuses text
that is not valid UTF-8 (invalid bytes on stdin or in a file, and the
surrogate escapes Python makes of invalid bytes in a command-line argument or
a terminal line) with an error that says where the text came from and which
byte is wrong. It never guesses an encoding or replaces bytes, so the model
sees exactly what was typed, or nothing.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CpuinferError

_HINT = "cpuinfer reads text as UTF-8"


def utf8_text(text: str, where: str) -> str:
    """`text` if it is valid Unicode that UTF-8 can encode; surrogate escapes of invalid bytes are refused."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise CpuinferError(f"{where} is not valid UTF-8 ({what} at character {e.start}); {_HINT}") from None
    return text


def decode_utf8(data: bytes, where: str) -> str:
    """`data` decoded as UTF-8, or a CpuinferError naming the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CpuinferError(f"{where} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                            f"{_HINT}") from None


def read_utf8_file(path: str | Path, what: str) -> str:
    """The text of a UTF-8 file, or a CpuinferError saying why it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CpuinferError(f"{what} {path}: cannot read ({e.strerror})") from None
    return decode_utf8(data, f"{what} {path}")
