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
        (["eval", "nobody/missing-model"], ["'nobody/missing-model' is not in the local Hugging Face cache"]),
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


def test_prune_prints_dense_vs_pruned_table_with_speed(capsys, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "bp"
    code, stdout, _ = run(capsys, "prune", str(tiny_model_dir), "--blocks", "2", "--samples", "8", "--seqlen", "32",
                          "--eval-max-windows", "2", "--speed", "--data-dir", str(data_dir), "--out", str(out))
    assert code == 0, stdout
    lines = stdout.splitlines()

    def row(label):
        found = [line for line in lines if line.startswith(label)]
        assert len(found) == 1, (label, stdout)
        return found[0].split()[-2:]

    for label in ("calibration PPL (alpaca)", "wikitext2 PPL (2 x 32 tokens)", "decode tokens/s (batch 1"):
        assert all(float(v.replace(",", "")) > 0 for v in row(label))
    report = json.loads((out / "report.json").read_text())
    dense, pruned = report["speed"]["dense"], report["speed"]["pruned"]
    assert pruned["params"] == report["pruned_params"] < dense["params"] == report["dense_params"]
    assert dense["decode_tokens_per_s"] > 0 and pruned["decode_tokens_per_s"] > 0
    assert row("parameters") == [f"{report['dense_params']:,}", f"{report['pruned_params']:,}"]
    assert f"wrote {out}" in stdout and "Decode speed" in (out / "report.md").read_text()


def test_prune_speed_is_refused_for_unstructured_methods(capsys, tiny_model_dir, data_dir):
    code, _, err = run(capsys, "prune", str(tiny_model_dir), "--method", "wanda", "--sparsity", "0.5", "--speed",
                       "--data-dir", str(data_dir))
    assert_one_line_error(code, err, "--speed", "wanda")


def test_untested_transformers_gives_one_warning_line(monkeypatch, caplog, tiny_model_dir):
    import transformers

    from secateurs import compat, load_model

    monkeypatch.setattr(transformers, "__version__", "9.1.0")
    compat.warn_if_untested.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            load_model(str(tiny_model_dir))
            load_model(str(tiny_model_dir))
    finally:
        compat.warn_if_untested.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if "outside the range" in r.getMessage()]
    assert warnings == ["warning: transformers 9.1.0 is outside the range secateurs was tested with "
                        "(5.23.x to 5.24.x); results may differ"]
