"""The house rules (tests/house_rules.py) hold for src/, and each check finds what it is meant to find."""

import textwrap

import pytest

import house_rules


@pytest.mark.parametrize("check", house_rules.CHECKS, ids=lambda c: c.__name__)
def test_src_keeps_the_house_rules(check):
    assert check() == []


def _package(root, files):
    for name, text in files.items():
        path = root / house_rules.PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_each_check_finds_a_breach(tmp_path):
    copied = "".join(f"    total = total + {i} * value\n" for i in range(7))
    src = _package(tmp_path, {
        "__init__.py": "from .a import run\n",
        "a.py": "from . import run_twice\n\ndef run(a, b, c, d, e, f, g, h, i, j, k):\n    return a\n",
        "run_twice.py": "from .a import run\n",
        "models/families.py": 'LayerLayout("pre-norm", "self_attn", "mlp", ("input_layernorm",), ("post_attention_layernorm",))\n'
                              'PROJECTIONS: dict = {"o": ("mha", "o_proj")}\n',
        "export.py": "def write(layer):\n    return layer.self_attn, getattr(layer, 'o_proj')\n",
        "one.py": "def f(value):\n    total = 0\n" + copied + "    return total\n",
        "two.py": "def g(value):\n    total = 1\n" + copied + "    return -total\n",
    })
    assert house_rules.long_signatures(src) == [f"{house_rules.PACKAGE}/a.py:3 run() takes 11 parameters (at most 10)"]
    assert house_rules.import_cycles(src) == [f"import cycle: {house_rules.PACKAGE}.a <-> {house_rules.PACKAGE}.run_twice"]
    reads = house_rules.model_attribute_reads(src)
    assert len(reads) == 2 and "'self_attn'" in reads[0] and "'o_proj'" in reads[1]
    assert len(house_rules.copied_code(src)) == 1 and "one.py" in house_rules.copied_code(src)[0]
