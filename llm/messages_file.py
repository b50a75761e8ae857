"""Files of SMS messages to classify: one reader and one set of rules for the app's uploads and `predict --file`.

    from llm.messages_file import MessagesFileError, read_messages
    messages, rows, columns = read_messages("inbox.csv", data)  # or MessagesFileError, worded for the user

The rules:

Names      .csv, .tsv or .txt (any case); anything else is refused.
Encoding   UTF-8, with or without the BOM that spreadsheet programs write; UTF-16 with a BOM (Excel's
           "Unicode Text"); else Windows-1252 (older Windows exports). Bytes none of these reads are refused.
Binary     a NUL byte, or more than 5% control characters (tab, newlines, vertical tab and form feed aside),
           is refused as a binary file; a ZIP or OLE file (an .xlsx / .xls workbook) is named as such.
Layout     decided from the first lines, in this order:
           1. `ham<TAB>message` or `spam<TAB>message` on the first two lines (the UCI SMS Spam Collection, no
              header): every line is a label, a tab and the message, split on the first tab with no CSV quoting
              (its messages hold quotes and the odd tab); a line of another form is refused, naming it.
              Columns: label, text.
           2. a header naming a text column (TEXT_COLUMNS, any case): that column holds the messages. The
              delimiter: a .csv tries comma, then semicolon (Excel in many European locales), then tab; a .tsv
              and a .txt only tab (a .txt only when its first line holds a tab, so a line with commas stays one
              message). Excel's "Text (Tab delimited)" export is a .txt like that.
           3. else by suffix: a .txt holds one message per line; a .csv or .tsv must have exactly one column,
              which then holds the messages (else it is refused, listing its columns).
CSV / TSV  quoted fields as spreadsheets write them (delimiters, newlines and doubled quotes inside quotes). The
           first row is always the header, also in a one-column file. Refused: a row with more fields than the
           header (most likely an unquoted comma: classifying half a message would be a silent wrong answer),
           and a double quote that is never closed (everything after it would read as one message).
Messages   stripped of surrounding whitespace (str.strip). CSV/TSV rows keep their places: an empty cell is an
           empty message, left for the caller to skip. Blank lines of a .txt or a UCI-layout file are dropped.
           A file without a single message is refused.
Limits     max_bytes / max_rows where the caller passes them (the app passes llm.serving.limits'); none otherwise.

Plain Python on purpose (no torch, no serving code): the app, the CLIs and the tests share it.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

TEXT_COLUMNS = ("text", "message", "sms", "body", "content", "v2")  # CSV columns read as the message, in this order
SUFFIXES = (".csv", ".tsv", ".txt")
UCI_LABELS = ("ham", "spam")  # the labels of a `label<TAB>message` line; llm.spam.LABELS (that module needs torch)
UCI_COLUMNS = ["label", "text"]
_DELIMITERS = {".csv": (",", ";", "\t"), ".tsv": ("\t",), ".txt": ("\t",)}  # tried in this order
_DELIMITER_NAMES = {",": ("comma", '"like, this"'), ";": ("semicolon", '"like; this"'),
                    "\t": ("tab", '"like<TAB>this"')}
# C0 and C1 control characters except tab, LF, VT, FF and CR, which text files do hold.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_BINARY_SHARE = 0.05  # text has next to no control characters; random bytes read as Windows-1252 have ~11%
_FIX_ENCODING = "Save it as UTF-8 (in a spreadsheet program: Save As > CSV UTF-8) and try again."
_KINDS = "a CSV with a `text` column, a TSV, or a TXT file with one message per line"

Rows = list[dict[str, "str | None"]]

# csv refuses a field over 128 KiB by default; a long message in a CSV is read like the same line in a TXT (the
# classifier reads its start). The callers' own byte limits bound what is read at all.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))


class MessagesFileError(ValueError):
    """A file of messages that cannot be read as such; the message says why and what to do."""


@dataclass
class MessagesFile:
    messages: list[str]  # one per row ("" for an empty CSV cell); stripped
    rows: Rows  # the original fields of each row ({} for a line of a .txt)
    columns: list[str]  # the original header ([] for a .txt)
    encoding: str  # "utf-8", "utf-16" or "cp1252": what the bytes were read as
    layout: str  # "csv" (any delimiter, with a header), "uci" (label<TAB>message lines) or "lines"


def read_messages(name: str, data: bytes, *, max_bytes: int | None = None,
                  max_rows: int | None = None) -> tuple[list[str], Rows, list[str]]:
    """(messages, rows, columns) of the file `name` holding `data`, or MessagesFileError; rules in the module doc."""
    f = load_messages(name, data, max_bytes=max_bytes, max_rows=max_rows)
    return f.messages, f.rows, f.columns


def load_messages(name: str, data: bytes, *, max_bytes: int | None = None,
                  max_rows: int | None = None) -> MessagesFile:
    """read_messages, with how the file was read (its encoding and layout) for callers that report it."""
    suffix = _check_suffix(name)
    if max_bytes is not None and len(data) > max_bytes:
        raise MessagesFileError(f"{name} is {_size(len(data))}; the limit is {_size(max_bytes)}. "
                                "Split it into smaller files.")
    text, encoding = decode_text(name, data)
    layout, delimiter = choose_layout(text, suffix)
    if layout == "csv":
        messages, rows, columns = read_csv_messages(text, name, delimiter)
    elif layout == "uci":
        messages, rows, columns = read_uci_lines(text, name)
    else:
        messages, rows, columns = read_lines(text)
    if not any(messages):
        raise MessagesFileError(f"{name} has no messages to classify. Put one message per line (TXT), or the "
                                "messages in a `text` column (CSV).")
    if max_rows is not None and len(messages) > max_rows:
        raise MessagesFileError(f"{name} has {len(messages):,} rows; at most {max_rows:,} are classified per file. "
                                "Split it into smaller files.")
    return MessagesFile(messages, rows, columns, encoding, layout)


def _size(n: int) -> str:
    """5242880 -> "5 MB" (MiB, as the upload limit in .chainlit/config.toml counts), 300 -> "300 bytes"."""
    return f"{n / 2**20:.1f} MB".replace(".0 MB", " MB") if n >= 2**17 else f"{n:,} bytes"


def _check_suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        rename = (" Or rename it to say which it is (a `ham<TAB>message` file such as the UCI SMSSpamCollection "
                  "reads as .tsv or .txt).") if not suffix else ""
        raise MessagesFileError(f"{name}: only .csv, .tsv and .txt files can be classified. Use {_KINDS}.{rename}")
    return suffix


# ----------------------------------------------------------------------------- bytes -> text
def decode_text(name: str, data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 (a BOM dropped), UTF-16 with a BOM, else Windows-1252; binary files refused."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text, encoding = data.decode("utf-16"), "utf-16"  # the BOM says which byte order, and is dropped
        except UnicodeDecodeError:
            raise MessagesFileError(f"{name} starts like UTF-16 text but is not valid UTF-16. "
                                    f"{_FIX_ENCODING}") from None
    elif b"\x00" in data:  # UTF-8 and Windows-1252 text never holds NUL; images, workbooks and archives do
        raise _binary(name, data)
    else:
        text, encoding = _utf8_or_cp1252(name, data)
    if "\x00" in text or len(_CONTROL.findall(text)) > _BINARY_SHARE * len(text):
        raise _binary(name, data)
    return text, encoding


def _utf8_or_cp1252(name: str, data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        # Not UTF-8: most likely an older Windows or Excel export. cp1252 leaves only five bytes undefined,
        # so a file that fails this too is not text in any encoding worth guessing.
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError as e:
        raise MessagesFileError(f"{name} is neither UTF-8 nor Windows-1252 text (byte {data[e.start]:#04x} at offset "
                                f"{e.start} is neither). {_FIX_ENCODING}") from None


def _binary(name: str, data: bytes) -> MessagesFileError:
    if data.startswith(b"PK\x03\x04"):
        what = " (an Excel workbook or another ZIP archive)"
    elif data.startswith(b"\xd0\xcf\x11\xe0"):
        what = " (an old Excel workbook or another Office file)"
    else:
        what = ""
    return MessagesFileError(f"{name} looks like a binary file{what}, not text. Use {_KINDS}; in a spreadsheet "
                             "program: Save As > CSV UTF-8.")


# ----------------------------------------------------------------------------- which layout
def choose_layout(text: str, suffix: str) -> tuple[str, str | None]:
    """("uci", None), ("csv", delimiter) or ("lines", None), by the rules of the module docstring (Layout)."""
    first = _first_lines(text, 2)
    if first and all(_is_uci_line(line) for line in first):
        return "uci", None
    for delimiter in _DELIMITERS[suffix]:
        if suffix == ".txt" and (not first or delimiter not in first[0]):
            continue
        if text_column(_header(text, delimiter)) is not None:
            return "csv", delimiter
    if suffix == ".txt":
        return "lines", None
    # No text column under any delimiter: read with the one that splits the header most, so that the
    # refusal lists the real columns (and `id;amount` is not taken for a one-column CSV of messages).
    return "csv", max(_DELIMITERS[suffix], key=lambda d: len(_header(text, d)))


def _first_lines(text: str, n: int) -> list[str]:
    """The first `n` non-blank lines (of the first 64 KiB: enough to decide, cheap on a large file)."""
    return [line for line in split_lines(text[:65536]) if line.strip()][:n]


def _is_uci_line(line: str) -> bool:
    label, tab, _ = line.partition("\t")
    return bool(tab) and label.strip().lower() in UCI_LABELS


def _header(text: str, delimiter: str) -> list[str]:
    try:
        return next((r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r), [])
    except csv.Error:
        return []


def text_column(columns: list[str]) -> str | None:
    """The column holding the messages: the first of TEXT_COLUMNS present (any case, spaces and a stray BOM aside)."""
    wanted = {c.replace("\ufeff", "").strip().lower(): c for c in columns}
    return next((wanted[c] for c in TEXT_COLUMNS if c in wanted), None)


# ----------------------------------------------------------------------------- the layouts
def split_lines(text: str) -> list[str]:
    """Lines ending in \\r\\n, \\n or \\r, as editors show them (not str.splitlines, which also breaks at
    form feeds, U+2028 and other characters a message may hold)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_lines(text: str) -> tuple[list[str], Rows, list[str]]:
    """One message per non-blank line."""
    messages = [line.strip() for line in split_lines(text) if line.strip()]
    return messages, [{} for _ in messages], []


def read_uci_lines(text: str, name: str) -> tuple[list[str], Rows, list[str]]:
    """`label<TAB>message` lines (the UCI collection's layout), split on the first tab only."""
    messages, rows = [], []
    for n, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        if not _is_uci_line(line):
            raise MessagesFileError(
                f"{name}: line {n} is not `ham<TAB>message` or `spam<TAB>message` like the first lines, so the file "
                f"cannot be read as the UCI SMS Spam Collection's layout (got {line[:60]!r}). Fix that line, or give "
                "the file a header row naming its columns (label<TAB>text) to read it as a TSV.")
        label, _, message = line.partition("\t")
        rows.append({"label": label.strip(), "text": message})
        messages.append(message.strip())
    return messages, rows, list(UCI_COLUMNS)


def read_csv_messages(text: str, name: str, delimiter: str = ",") -> tuple[list[str], Rows, list[str]]:
    """(messages, rows, columns) of decoded CSV text (or TSV: delimiter "\\t"); refusals as in the module doc."""
    _refuse_unclosed_quote(text, name, delimiter)
    columns, records = _parse(text, name, delimiter)
    _refuse_overlong(records, len(columns), name, delimiter)
    column = text_column(columns)
    if column is None and len(columns) == 1:  # a one-column file: that column holds the messages
        column = columns[0]
    if column is None:
        raise MessagesFileError(f"{name} has no text column (columns found: {', '.join(columns) or 'none'}). "
                                "Name the column holding the messages `text` (or one of: "
                                f"{', '.join(TEXT_COLUMNS[1:])}), or use a one-column file.")
    rows = [{c: (r[i] if i < len(r) else None) for i, c in enumerate(columns)} for r in records]
    return [(row[column] or "").strip() for row in rows], rows, columns


def _parse(text: str, name: str, delimiter: str) -> tuple[list[str], list[list[str]]]:
    """(header, data records); blank lines skipped, as csv.DictReader does."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        records = [r for r in reader if r]
    except csv.Error as e:
        raise MessagesFileError(f"{name} is not a valid {_kind(delimiter)} ({e}, line {reader.line_num}). "
                                f"Fix that line, or use {_KINDS}.") from None
    return (records[0], records[1:]) if records else ([], [])


def _refuse_unclosed_quote(text: str, name: str, delimiter: str) -> None:
    """csv's tolerant reading takes everything after a quote that is never closed, to the end of the file, as
    one field: many messages classified as one. A strict pass finds that quote; its other complaints (such as
    `"Hi" he said`, read by the tolerant pass as `Hi he said`) are let through."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    while True:
        line = reader.line_num + 1
        try:
            next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                raise MessagesFileError(f"{name}: the double quote opened on line {line} is never closed, so the rest "
                                        "of the file would read as one message. Close it (a quote inside a quoted "
                                        'message is written twice: "say ""hi"""), or remove it.') from None


def _refuse_overlong(records: list[list[str]], n_columns: int, name: str, delimiter: str) -> None:
    overlong = [i + 1 for i, r in enumerate(records) if len(r) > n_columns]
    if overlong:
        listed = ", ".join(map(str, overlong[:5])) + (f" and {len(overlong) - 5} more" if len(overlong) > 5 else "")
        what, example = _DELIMITER_NAMES[delimiter]
        raise MessagesFileError(f"{name}: data row {listed} has more fields than the header's {n_columns}. A message "
                                f"that contains a {what} must be in double quotes ({example}); or use a TXT file, "
                                "one message per line.")


def _kind(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"
