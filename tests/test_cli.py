import json

import pytest

from secateurs.cli import main


def run(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed
    code = main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_eval_tiny_model_writes_json_with_protocol(capsys, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "results.json"
    code, stdout, _ = run(capsys, "eval", str(tiny_model_dir), "--ppl", "wikitext2,ptb", "--seqlen", "32",
                          "--max-windows", "3", "--data-dir", str(data_dir), "--out", str(out))
    assert code == 0
    assert "wikitext2 (test): token PPL" in stdout and "over 3 windows x 32 tokens" in stdout
    result = json.loads(out.read_text())
    proto = result["perplexity"]["wikitext2"]["protocol"]
    assert proto["windows"] == 3 and proto["seqlen"] == 32 and proto["split"] == "test"
    assert proto["files"]["text/wikitext2/test.txt"] and len(proto["token_sha256"]) == 64
    assert result["environment"]["versions"]["torch"] and result["command"][:2] == ["secateurs", "--quiet"]
    assert result["perplexity"]["ptb"]["ppl"] > 1
    code, _, err = run(capsys, "eval", str(tiny_model_dir), "--seqlen", "32", "--max-windows", "1",
                       "--data-dir", str(data_dir), "--out", str(out))
    assert_one_line_error(code, err, "already exists", "--overwrite")


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["eval", "no-such-model"], ["unknown model 'no-such-model'", "smollm2-135m"]),
        (["eval", "nobody/missing-model"], ["could not load 'nobody/missing-model'"]),
        (["eval", "./missing/dir"], ["model path not found"]),
    ],
)
def test_bad_models(capsys, argv, fragments):
    assert_one_line_error(*run(capsys, *argv)[::2], *fragments)


def test_bad_data(capsys, tiny_model_dir, data_dir, tmp_path):
    model = str(tiny_model_dir)
    code, _, err = run(capsys, "eval", model, "--ppl", "wikitext3", "--data-dir", str(data_dir))
    assert_one_line_error(code, err, "unknown dataset 'wikitext3'", "wikitext2")
    code, _, err = run(capsys, "eval", model, "--data-dir", str(tmp_path / "nope"))
    assert_one_line_error(code, err, "data directory does not exist")
    short = tmp_path / "short.txt"
    short.write_text("only a few words\n")
    code, _, err = run(capsys, "eval", model, "--ppl", str(short), "--seqlen", "512")
    assert_one_line_error(code, err, "found 16 tokens, need at least 512")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "some text here"}\n')
    code, _, err = run(capsys, "eval", model, "--ppl", str(rows), "--seqlen", "8")
    assert_one_line_error(code, err, "rows.jsonl:1: row lacks the field 'text'")
    code, out, _ = run(capsys, "eval", model, "--ppl", str(rows), "--text-field", "body", "--seqlen", "8")
    assert code == 0 and "over 1 windows x 8 tokens" in out


def test_corrupt_gguf_and_safetensors(capsys, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SECATEURS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"not a gguf file at all")
    assert_one_line_error(*run(capsys, "eval", str(gguf))[::2], "could not load GGUF file")
    (tiny_model_dir / "model.safetensors").write_bytes(b"\x00" * 64)
    assert_one_line_error(*run(capsys, "eval", str(tiny_model_dir))[::2], "could not load model directory")


def test_data_and_methods_commands(capsys, data_dir):
    code, out, _ = run(capsys, "data", "--data-dir", str(data_dir))
    assert code == 0
    assert "[ok] wikitext2:test (default)" in out and "[ok] legalbench:train (default)" in out
    code, out, _ = run(capsys, "methods")
    assert code == 0 and out.strip()
