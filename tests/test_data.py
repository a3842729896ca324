import json

import pytest

from secateurs import SecateursError, token_windows, load_documents, make_windows
from secateurs.data import NAMED_SETS, DocumentSet, Document, token_sha256


def _docs(*texts):
    return DocumentSet("toy", None, [Document(str(i), t) for i, t in enumerate(texts)])


def test_windows_join_tokenise_once_and_drop_tail(byte_tokenizer):
    docs = _docs("abcde", "fgh", "ij")
    windows = make_windows(docs, byte_tokenizer, seqlen=4)
    stream = byte_tokenizer("abcde\n\nfgh\n\nij", add_special_tokens=True)["input_ids"]
    assert len(stream) == 14
    assert windows.input_ids.shape == (3, 4)  # 14 tokens -> 3 windows, 2 dropped
    assert windows.input_ids.flatten().tolist() == stream[:12]
    proto = windows.protocol
    assert proto["tokens_in_stream"] == 14 and proto["tokens_used"] == 12 and proto["windows"] == 3
    assert proto["stride"] == 4 and proto["separator"] == "\n\n"
    assert proto["token_sha256"] == token_sha256(windows.input_ids)
    assert len(make_windows(docs, byte_tokenizer, seqlen=4, max_windows=2)) == 2


def test_samples_are_seeded_and_recorded(byte_tokenizer):
    docs = _docs(*[f"document number {i} " * 3 for i in range(50)])
    a = make_windows(docs, byte_tokenizer, seqlen=16, samples=10, seed=0)
    b = make_windows(docs, byte_tokenizer, seqlen=16, samples=10, seed=0)
    c = make_windows(docs, byte_tokenizer, seqlen=16, samples=10, seed=1)
    assert a.protocol["sample_ids"] == b.protocol["sample_ids"]
    assert a.protocol["token_sha256"] == b.protocol["token_sha256"]
    assert a.protocol["sample_ids"] != c.protocol["sample_ids"]
    assert a.protocol["token_sha256"] != c.protocol["token_sha256"]
    assert len(set(a.protocol["sample_ids"])) == 10 and a.protocol["seed"] == 0
    with pytest.raises(SecateursError, match="has 50 documents; cannot draw 51"):
        make_windows(docs, byte_tokenizer, seqlen=16, samples=51)


def test_too_short_and_empty_data_say_how_many_tokens(byte_tokenizer):
    with pytest.raises(SecateursError, match=r"found 5 tokens, need at least 64"):
        make_windows(_docs("hello"), byte_tokenizer, seqlen=64)
    with pytest.raises(SecateursError, match=r"no usable text \(0 tokens; need at least 64"):
        make_windows(_docs("", "  "), byte_tokenizer, seqlen=64)
    with pytest.raises(SecateursError, match="at least 2"):
        make_windows(_docs("hello"), byte_tokenizer, seqlen=1)


def test_every_named_set_resolves_in_the_shared_data(data_dir):
    for name, named in NAMED_SETS.items():
        for split in named.splits:
            docs = load_documents(f"{name}:{split}", data_dir)
            assert len(docs.documents) > 0, (name, split)
            assert docs.files and all(len(h) == 64 for h in docs.files.values())
            assert len({d.id for d in docs.documents}) == len(docs.documents), f"{name}:{split} ids collide"


def test_named_set_sizes_and_rendering(data_dir):
    assert len(load_documents("wikitext2", data_dir).documents) == 4358  # one document per line
    alpaca = load_documents("alpaca", data_dir).documents
    assert len(alpaca) == 200 + 3142
    assert alpaca[0].id == "alpaca:0" and alpaca[200].id == "alpaca_libre:0"
    assert alpaca[0].text.startswith("Below is an instruction that describes a task.")
    assert "### Instruction:\nGive three tips for staying healthy." in alpaca[0].text
    assert "### Response:\n1.Eat a balanced diet" in alpaca[0].text
    with_input = next(d for d in alpaca if "### Input:" in d.text)
    assert "paired with an input" in with_input.text
    train = {d.id for d in load_documents("pubmedqa:train", data_dir).documents}
    test = {d.id for d in load_documents("pubmedqa:test", data_dir).documents}
    assert len(train) == len(test) == 500 and not train & test


def test_unknown_names_and_bad_directories(data_dir, tmp_path):
    with pytest.raises(SecateursError, match="unknown dataset 'wikitext3'.*wikitext2"):
        load_documents("wikitext3", data_dir)
    with pytest.raises(SecateursError, match="no split 'train'; splits: test, valid"):
        load_documents("wikitext2:train", data_dir)
    with pytest.raises(SecateursError, match="data directory does not exist"):
        load_documents("wikitext2", tmp_path / "nope")
    with pytest.raises(SecateursError, match="data file not found"):
        load_documents("wikitext2", tmp_path)  # exists, but holds no data
    with pytest.raises(SecateursError, match="data file not found"):
        load_documents(str(tmp_path / "missing.jsonl"))


def test_data_dir_from_environment(data_dir, monkeypatch):
    monkeypatch.setenv("SECATEURS_DATA", str(data_dir))
    assert len(load_documents("ptb").documents) > 0
    monkeypatch.setenv("SECATEURS_DATA", "/does/not/exist")
    with pytest.raises(SecateursError, match=r"does not exist: /does/not/exist \(from \$SECATEURS_DATA\)"):
        load_documents("ptb")


def test_local_files(tmp_path, byte_tokenizer):
    txt = tmp_path / "notes.txt"
    txt.write_text("first line\nsecond line\n")
    docs = load_documents(str(txt))
    assert [d.text for d in docs.documents] == ["first line", "second line"]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "body": "alpha"}) + "\n\n" + json.dumps({"body": "beta"}) + "\n")
    docs = load_documents(str(jsonl), text_field="body")
    assert [(d.id, d.text) for d in docs.documents] == [("rows.jsonl:a", "alpha"), ("rows.jsonl:line3", "beta")]
    with pytest.raises(SecateursError, match=r"rows.jsonl:1: row lacks the field 'text'"):
        load_documents(str(jsonl))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(SecateursError, match=r"bad.jsonl:2: malformed JSON"):
        load_documents(str(bad))
    windows = token_windows(str(txt), byte_tokenizer, seqlen=8)
    assert windows.protocol["dataset"] == str(txt) and len(windows) == 2
