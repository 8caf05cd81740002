"""Runnable documentation: every ``>>>`` example of ``docs/conventions.md`` runs and prints what the page says, and
the page's reference lists every public function of ``lightning_decay.optim.conventions`` with its signature.
"""

from __future__ import annotations

import ast
import doctest
import inspect
import re
from pathlib import Path

import pytest

from lightning_decay.optim import conventions

REPO = Path(__file__).resolve().parents[1]
CONVENTIONS = REPO / "docs" / "conventions.md"


def pycon_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every ```` ```pycon ```` block of a Markdown file."""
    text = path.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```pycon\n(.*?)```", text, re.S)]


def reference_signatures(path: Path) -> dict[str, str]:
    """``name -> signature`` from the reference headings ``### `name(...) -> type` ``."""
    headings = re.finditer(r"^### `(\w+)\(.*\)(?: -> [^`]+)?`$", path.read_text(), re.M)
    return {m.group(1): m.group(0)[5:-1] for m in headings}


def test_conventions_examples_run_and_print_what_the_page_says() -> None:
    blocks = pycon_blocks(CONVENTIONS)
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examples = 0
    for line, block in blocks:
        test = parser.get_doctest(block, {}, f"docs/conventions.md:{line}", str(CONVENTIONS), line)
        examples += len(test.examples)
        runner.run(test)  # each block on its own: every block imports what it uses
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of docs/conventions.md failed"
    assert examples >= 30


@pytest.mark.parametrize("name", conventions.__all__)
def test_every_conventions_function_has_its_signature_and_an_example(name: str) -> None:
    """A ``### `name(...)` `` heading whose parameters (names, order, defaults) are the function's, followed by a
    ``pycon`` block that calls it."""
    signatures = reference_signatures(CONVENTIONS)
    assert name in signatures, f"docs/conventions.md has no reference heading for {name}"
    documented = ast.parse(f"def {signatures[name]}: pass").body[0].args  # type: ignore[attr-defined]
    actual = inspect.signature(getattr(conventions, name)).parameters.values()
    names = [a.arg for a in documented.args]
    assert names == [p.name for p in actual]
    defaults = dict(zip(names[::-1], [ast.literal_eval(d) for d in documented.defaults][::-1]))
    assert defaults == {p.name: p.default for p in actual if p.default is not inspect.Parameter.empty}
    section = CONVENTIONS.read_text().split(f"### `{name}(", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    assert re.search(rf"```pycon\n(.*\n)*>>> .*\b{name}\(", section), f"no example calls {name}"
