"""llm/messages_file.py: the one reader of message files, shared by the app's uploads (chat.read_upload) and
`python -m finetune.spam predict --file`. Every case runs through both paths, so the two cannot drift apart;
hypothesis checks the CSV reader round-trips what csv.writer writes and refuses junk only with its own error."""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from finetune import spam as cli
from finetune import spam_predict
from llm import messages_file as mf
from llm.messages_file import MessagesFileError, read_messages
from llm.serving import chat
from llm.serving.chat import InputError

ROOT = Path(__file__).resolve().parents[1]
BOM = b"\xef\xbb\xbf"
UCI = (b'ham\tGo until jurong point, crazy.. "Available only\n'  # an unbalanced quote: no CSV quoting here
       b"spam\tFree entry in 2 a wkly comp\tto win\n\nham\tOk lar...\n")  # a second tab, a blank line


def workbook() -> bytes:
    """What an .xlsx is on disk: a ZIP archive."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>" * 50)
    return out.getvalue()


# (file name, bytes, the messages both paths read, empty rows left out)
GOOD = [
    pytest.param("inbox.csv", BOM + b'id,Message\r\n1,"hi, how are you"\r\n2,WIN a prize\r\n3,\r\n',
                 ["hi, how are you", "WIN a prize"], id="utf8-bom-csv"),  # Excel's "CSV UTF-8"
    pytest.param("sms.tsv", b"label\ttext\nham\tsee you at 7\nspam\tWIN a prize, call now\n",
                 ["see you at 7", "WIN a prize, call now"], id="tsv-header-and-labels"),
    pytest.param("SMSSpamCollection.tsv", UCI,
                 ['Go until jurong point, crazy.. "Available only', "Free entry in 2 a wkly comp\tto win", "Ok lar..."],
                 id="uci-tsv-no-header"),
    pytest.param("SMSSpamCollection.txt", UCI,
                 ['Go until jurong point, crazy.. "Available only', "Free entry in 2 a wkly comp\tto win", "Ok lar..."],
                 id="uci-txt-no-header"),
    pytest.param("export.txt", b"id\tMessage\n1\thello, you\n2\tcall me\n", ["hello, you", "call me"],
                 id="txt-tab-delimited-with-header"),  # Excel's "Text (Tab delimited)"
    pytest.param("unicode.txt", "text\tid\r\ncafé ☕\t1\r\n".encode("utf-16"), ["café ☕"],
                 id="utf16-excel-unicode-text"),
    pytest.param("notes.txt", b"see you\tlater\n\n  ok, fine  \n", ["see you\tlater", "ok, fine"],
                 id="txt-lines-keep-their-tabs-and-commas"),
    pytest.param("quoted.csv", b'text\n"hi, how are you"\n"line one\nline two"\n"say ""hi"""\n',
                 ["hi, how are you", "line one\nline two", 'say "hi"'], id="quoted-commas-newlines-quotes"),
    pytest.param("european.csv", b"id;Text\n1;hello, world\n", ["hello, world"], id="semicolon-csv"),
    pytest.param("legacy.csv", b"text\ncaf\xe9 tonight?\n", ["café tonight?"], id="windows-1252-fallback"),
    pytest.param("old-mac.txt", b"one\rtwo\r\nthree\n", ["one", "two", "three"], id="cr-line-ends"),
]

# (file name, bytes, what the refusal says)
BAD = [
    pytest.param("photo.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "looks like a binary file",
                 id="binary-with-nul"),
    pytest.param("book.csv", workbook(), r"binary file \(an Excel workbook.*Save As > CSV UTF-8", id="xlsx-renamed"),
    pytest.param("noise.txt", bytes(b for b in range(1, 256) if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)) * 4,
                 "looks like a binary file", id="binary-without-nul"),
    pytest.param("sms.csv", b"text\nhello \x81\x8d world\n", r"neither UTF-8 nor Windows-1252 .*byte 0x81 at offset 11",
                 id="undecodable"),
    pytest.param("sms.csv", b"text\nWINNER!! Claim your prize now, call 09061701461\nsee you\n",
                 r"data row 1 has more fields than the header's 1\. .*double quotes", id="unquoted-comma"),
    pytest.param("sms.tsv", b"text\nok\nsee\tyou\n", r"data row 2 has more fields.*contains a tab", id="unquoted-tab"),
    pytest.param("sms.csv", b'text\nok\n"hello\nworld\nmore\n', "the double quote opened on line 3 is never closed",
                 id="unclosed-quote"),
    pytest.param("uci.tsv", b"ham\thi\nspam\tyo\nno label here\n", r"line 3 is not `ham<TAB>message`",
                 id="uci-bad-line"),
    pytest.param("pay.csv", b"id;amount\n1;20\n", r"no text column \(columns found: id, amount\)",
                 id="no-text-column"),
    pytest.param("sheet.xlsx", workbook(), r"only \.csv, \.tsv and \.txt", id="wrong-suffix"),
    pytest.param("empty.txt", b"\n \n", "no messages", id="empty"),
]


def cli_file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name, data, expected", GOOD)
def test_the_app_reads(name, data, expected):
    messages, rows, columns = chat.read_upload(name, data)
    assert [m for m in messages if m] == expected
    assert len(rows) == len(messages)


@pytest.mark.parametrize("name, data, expected", GOOD)
def test_the_cli_reads_the_same(tmp_path, name, data, expected):
    assert spam_predict.read_messages_file(cli_file(tmp_path, name, data)) == expected


@pytest.mark.parametrize("name, data, says", BAD)
def test_the_app_refuses(name, data, says):
    with pytest.raises(InputError, match=says):
        chat.read_upload(name, data)


@pytest.mark.parametrize("name, data, says", BAD)
def test_the_cli_refuses_in_one_line_with_status_2(tmp_path, capsys, name, data, says):
    # The file is read before any checkpoint is loaded, so no checkpoint is needed to see the refusal.
    assert cli.main(["predict", "--file", cli_file(tmp_path, name, data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(says, err), err


def test_columns_and_rows_are_kept_for_the_labelled_csv():
    messages, rows, columns = read_messages("sms.tsv", b"label\ttext\nham\tsee you\n")
    assert columns == ["label", "text"] and rows == [{"label": "ham", "text": "see you"}]
    messages, rows, columns = read_messages("SMSSpamCollection.txt", UCI)
    assert columns == ["label", "text"] and [r["label"] for r in rows] == ["ham", "spam", "ham"]
    messages, rows, columns = read_messages("a.csv", b"id,text,extra\n1,hi\n")  # a short row: missing fields None
    assert rows == [{"id": "1", "text": "hi", "extra": None}] and messages == ["hi"]


def test_a_header_naming_spam_is_not_taken_for_the_uci_layout():
    # `spam<TAB>message` as a header, 0/1 below: only a file whose first two lines are labelled is UCI.
    messages, _, columns = read_messages("flags.tsv", b"spam\tmessage\n1\thi there\n0\tok\n")
    assert columns == ["spam", "message"] and messages == ["hi there", "ok"]


def test_how_the_file_was_read_is_reported():
    f = mf.load_messages("legacy.csv", b"text\ncaf\xe9\n")
    assert (f.encoding, f.layout) == ("cp1252", "csv")
    assert mf.load_messages("u.txt", "a\nb".encode("utf-16")).encoding == "utf-16"
    assert mf.load_messages("x.txt", BOM + b"a\n").layout == "lines"


def test_the_cli_notes_a_windows_1252_guess_and_skipped_rows(tmp_path, capsys):
    assert spam_predict.read_messages_file(cli_file(tmp_path, "a.csv", b"text\ncaf\xe9\n\"\"\n")) == ["café"]
    err = capsys.readouterr().err
    assert "read as Windows-1252" in err and "1 empty row of" in err
    assert cli.main(["predict", "--file", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_limits_apply_where_passed():
    with pytest.raises(MessagesFileError, match=r"has 3 rows; at most 2 are classified per file"):
        read_messages("a.txt", b"a\nb\nc\n", max_rows=2)
    with pytest.raises(MessagesFileError, match=r"a.txt is 4 bytes; the limit is 3 bytes\. Split it"):
        read_messages("a.txt", b"a\nb\n", max_bytes=3)
    assert mf._size(chat.FILE_MAX_BYTES) == "5 MB" and mf._size(6_000_000) == "5.7 MB"
    assert read_messages("a.txt", b"a\nb\nc\n")[0] == ["a", "b", "c"]  # the CLI passes none
    with pytest.raises(InputError, match=f"at most {chat.FILE_MAX_ROWS:,}"):  # the app passes its own
        chat.read_upload("big.txt", b"x\n" * (chat.FILE_MAX_ROWS + 1))


def test_the_uci_labels_are_the_classifiers_labels():
    from llm import spam
    assert set(mf.UCI_LABELS) == set(spam.LABELS)


# ----------------------------------------------------------------------------- the CLI as a user runs it
@pytest.fixture(scope="module")
def spam_ckpt(tmp_path_factory):
    from llm.checkpoint import save_checkpoint
    from llm.config import GPTConfig
    from llm.model import GPTClassifier

    torch.manual_seed(1)
    model = GPTClassifier(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128), 2).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("spam"),
                           metadata={"labels": ["ham", "spam"], "max_length": 64})


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune.spam", "predict", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_cli_subprocess_classifies_a_bom_csv(spam_ckpt, tokenizer, tmp_path):
    path = cli_file(tmp_path, "inbox.csv", BOM + b'Text\r\n"WINNER, claim your prize"\r\nsee you at 7\r\n')
    r = run_predict("--checkpoint", str(spam_ckpt), "--json", "--file", path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["text"] for o in out] == ["WINNER, claim your prize", "see you at 7"]
    assert all(o["label"] in ("ham", "spam") for o in out)


def test_cli_subprocess_refuses_a_binary_file(spam_ckpt, tmp_path):
    path = cli_file(tmp_path, "photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    r = run_predict("--checkpoint", str(spam_ckpt), "--json", "--file", path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "binary file" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- properties
# Messages as a spreadsheet may hold them: any character but surrogates and control characters (a file with
# those is refused as binary), with delimiters, quotes and line breaks made frequent.
message_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(list('\t\n\r",; ')),
                       max_size=40)


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(message_text, min_size=1, max_size=12), bom=st.booleans(),
       kind=st.sampled_from([("sms.csv", ","), ("sms.tsv", "\t")]))
def test_what_csv_writer_writes_reads_back(messages, bom, kind):
    name, delimiter = kind
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(["text"])
    writer.writerows([m] for m in messages)
    data = (BOM if bom else b"") + out.getvalue().encode("utf-8")
    expected = [m.strip() for m in messages]  # the documented strip rule; rows keep their places
    if not any(expected):
        with pytest.raises(MessagesFileError, match="no messages"):
            read_messages(name, data)
    else:
        assert read_messages(name, data)[0] == expected


# Bytes that reach the interesting branches often: delimiters, quotes, BOMs, labels, NULs, cp1252-only bytes.
pieces = st.sampled_from([b",", b";", b"\t", b'"', b"\n", b"\r", b"\r\n", b"ham\t", b"spam\t", b"text", b"Message",
                          BOM, b"\xff\xfe", b"\xfe\xff", b"a", b" ", b"\x00", b"\x01", b"\x81", b"\xe9", b"\xc3\xa9",
                          b"\xe2\x82"])
junk = st.one_of(st.binary(max_size=300), st.lists(pieces, max_size=60).map(b"".join))


@settings(max_examples=100, deadline=None)
@given(data=junk, suffix=st.sampled_from(mf.SUFFIXES))
def test_any_bytes_read_or_raise_only_the_readers_error(data, suffix):
    try:
        messages, rows, columns = read_messages("f" + suffix, data)
    except MessagesFileError as e:
        assert str(e)
    else:
        assert any(messages) and len(rows) == len(messages)
        assert all(m == m.strip() for m in messages)
