"""The README and docs/: short enough, every link resolves, nothing outside the repository,
and the CLI reference names only commands and options the real CLI has (and all of them)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgec.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
REGENERATE = "regenerate it: PYTHONPATH=src python docs/cli_reference.py"

# [text](target) and ![alt](target); the target stops at whitespace or ')'.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """Markdown without fenced blocks and code spans (links inside them are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def _relative_links(page: Path) -> list[str]:
    links = _LINK.findall(_prose(page.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


def test_readme_is_under_150_lines():
    """A newcomer reads the README in two minutes; the reference lives in docs/."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 150, f"README.md has {len(lines)} lines; move reference text to docs/"


def test_the_readme_links_the_docs_index_and_every_topic_page():
    linked = set(_relative_links(README))
    for page in ("index", "cli", "targets", "backends", "int8", "students", "cascade"):
        assert f"docs/{page}.md" in linked, page
    for page in ("partition", "bundle", "trust", "architecture"):
        assert f"docs/{page}.md" in linked, page


def test_the_docs_index_lists_every_page():
    listed = set(_relative_links(DOCS / "index.md"))
    pages = ({p.name for p in DOCS.glob("*.md")} | {"trust.md"}) - {"index.md"}
    assert pages <= listed, f"docs/index.md does not list {sorted(pages - listed)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_in_the_repository(page: Path):
    """Relative links (and #anchors into markdown pages) resolve inside the repository."""
    broken = []
    for link in _relative_links(page):
        path_part, _, anchor = link.partition("#")
        target = (page.parent / path_part).resolve() if path_part else page
        if not target.is_relative_to(ROOT):
            broken.append(f"{link} (outside the repository)")
        elif not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading '#{anchor}' in {target.name})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    """The checker above is not vacuous: it finds links on a page and judges them."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [gone](nope.md) `[code](nope.md)` ![img](x.png)\n")
    assert _relative_links(page) == ["#title", "nope.md", "x.png"]
    assert _anchors(page) == {"title"}
    assert _slug("Why is INT8 slow here? (`edgec inspect --precision int8`)") == (
        "why-is-int8-slow-here-edgec-inspect---precision-int8"
    )


def test_nothing_refers_to_anything_outside_the_repository():
    """No file of the repository (docs, sources, tests, benchmarks, CI) points outside it."""
    folders = ("docs", "src", "tests", "examples", "benchmarks", ".ci")
    files = [README, ROOT / "Makefile", *(p for f in folders for p in (ROOT / f).rglob("*"))]
    texts = {"", ".md", ".py", ".j2", ".yaml", ".txt", ".sh"}
    # Written as patterns so that this file does not name what it looks for.
    outside = re.compile(r'\.\./shared|/wor[k]/|shared/model[s]|"share[d]" /')
    offenders = []
    for path in files:
        # Build output (an editable install's egg-info copies an old README) is not ours.
        built = any(part.endswith(".egg-info") for part in path.parts)
        if path.is_file() and path.suffix in texts and not built:
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [
                f"{path.relative_to(ROOT)}: {m}" for m in sorted(set(outside.findall(text)))
            ]
    assert not offenders, offenders


def _help_commands(args: list[str]) -> set[str]:
    """Command names listed under 'Commands:' in the real CLI's --help output."""
    result = CliRunner().invoke(main, [*args, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    listing = result.output.split("Commands:", 1)[1]
    return {m.group(1) for m in re.finditer(r"^\s{2}([a-z][a-z-]*)\s", listing, re.M)}


def test_every_edgec_command_in_the_cli_reference_exists_in_edgec_help():
    cli_md = (DOCS / "cli.md").read_text(encoding="utf-8")
    named = re.findall(r"`edgec ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", cli_md)
    assert named, "docs/cli.md names no `edgec <command>`"
    commands = _help_commands([])
    subcommands = {c: _help_commands([c]) for c in commands if "Commands:" in _help_of([c])}
    unknown = sorted(
        {f"edgec {c}" for c, _ in named if c not in commands}
        | {f"edgec {c} {s}" for c, s in named if c in subcommands and s and s not in subcommands[c]}
    )
    assert not unknown, f"docs/cli.md names commands edgec --help does not list: {unknown}"
    documented = {c for c, _ in re.findall(r"^## `edgec ([a-z-]+)( [a-z-]+)?`", cli_md, re.M)}
    assert commands <= documented, f"undocumented: {sorted(commands - documented)}; {REGENERATE}"


def _help_of(args: list[str]) -> str:
    return CliRunner().invoke(main, [*args, "--help"], catch_exceptions=False).output


def _documented_options() -> dict[str, set[str]]:
    """Per command section of docs/cli.md (``compile``, ``targets show``), its option flags."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in (DOCS / "cli.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## `edgec ([a-z -]+)`$", line)
        if heading:
            current = heading.group(1)
            sections[current] = set()
        elif current and (row := re.match(r"^\| `([^`]+)` \|", line)):
            sections[current] |= set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", row.group(1)))
    return sections


def _cli_options(path: str) -> set[str]:
    command: click.Command = main
    for name in path.split():
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return {
        flag
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and param.name != "help"
        for flag in (*param.opts, *param.secondary_opts)
    }


def test_the_cli_reference_lists_exactly_the_options_of_each_command():
    """docs/cli.md's option tables match the CLI: none missing, none that do not exist."""
    documented = _documented_options()
    assert "compile" in documented and "--target" in documented["compile"]
    for path, flags in documented.items():
        actual = _cli_options(path)
        assert flags == actual, (
            f"edgec {path}: documented but absent {sorted(flags - actual)}, "
            f"present but undocumented {sorted(actual - flags)}; {REGENERATE}"
        )
