"""Every ```python block of README.md runs as written, in order, in one namespace, in an empty folder."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(python_blocks(README.read_text())) >= 1
    assert python_blocks("```python\na = 1\n```\ntext\n```python\nb = a\n```\n") == ["a = 1\n", "b = a\n"]


def test_every_readme_python_block_runs(tmp_path, monkeypatch):
    from modcircuit.circuits import methods
    from modcircuit.train.regimes import base

    # the README registers its own regime (and could register methods): keep that out of later tests
    monkeypatch.setattr(base, "_REGIMES", dict(base._REGIMES))
    monkeypatch.setattr(methods, "_METHODS", {k: dict(v) for k, v in methods._METHODS.items()})
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks(README.read_text())):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_readme_regime_stays_out_of_the_registry():
    from modcircuit.train.regimes import regime_names

    assert "shrink" not in regime_names()  # test_every_readme_python_block_runs ran before, in this file
