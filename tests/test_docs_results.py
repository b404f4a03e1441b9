"""Every result file the docs name is committed (issue 33: no doc cites a figure whose JSON,
log or plot is not in the repository).

Scanned: README.md and docs/**/*.md. A reference is

- a path under ``benchmarks/results/`` or ``docs/results/`` (``*`` and ``{a,b}`` expand; a
  lone capital between underscores, as in ``real_data_D_spatial.json`` with ``--dataset D``,
  stands for any name: the pattern must match at least one committed file);
- a relative Markdown link or image (``![curve](results/gp2d/curve.png)``), resolved against
  the doc's folder;
- a bare ``name.json`` / ``name.jsonl`` whose name starts with a benchmark script's name
  (``real_data_heaton.json`` from ``benchmarks/real_data.py``): it means
  ``benchmarks/results/name``; any other bare name counts only when the same line names a
  ``docs/results/<folder>/`` file (``docs/results/gp2d/eval.md``, ``eval.json``), and then
  means that folder. Other bare names (a user's ``--out pred.json``) are not results.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from collections.abc import Collection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_QUALIFIED = re.compile(
    r"(?<![\w./$<-])((?:benchmarks/results|docs/results)/[\w./*{},-]*?[\w*}]\.[a-z]+)(?!\w|\.\w)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_BARE = re.compile(r"(?<![\w./$<*{,-])([A-Za-z0-9_-]+\.jsonl?)(?!\w|\.\w)")
_DOCS_RESULTS_DIR = re.compile(r"(?<![\w./$<-])(docs/results/[\w-]+(?:/[\w-]+)*)/[\w.-]+")
_PLACEHOLDER = re.compile(r"(?<=[_/])[A-Z](?=[_.])")


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [p for alt in match.group(1).split(",")
            for p in _expand_braces(head + alt + tail)]


def _present(pattern: str, tracked: Collection[str]) -> bool:
    pattern = _PLACEHOLDER.sub("*", pattern)
    if "*" not in pattern:
        return pattern in tracked
    return any(fnmatch.fnmatchcase(path, pattern) for path in tracked)


def referenced_results(text: str, doc: str, scripts: Collection[str]) -> list[str]:
    """Repository-relative paths (or patterns) of the result files ``text`` names; ``doc``
    is the doc's repository-relative path, ``scripts`` the benchmark scripts' stems."""
    found: list[str] = []
    folder = Path(doc).parent
    for line in text.splitlines():
        for path in _QUALIFIED.findall(line):
            found.extend(_expand_braces(path))
        for target in _LINK.findall(line):
            target = target.split("#", 1)[0]
            if target and "://" not in target and not target.startswith("mailto:"):
                found.append((folder / target).as_posix())
        dirs = sorted(set(_DOCS_RESULTS_DIR.findall(line)))
        for name in _BARE.findall(line):
            if any(name.startswith(s + "_") or name.startswith(s + ".") for s in scripts):
                found.append(f"benchmarks/results/{name}")
            elif dirs:
                # any of the folders the line names may hold it; recorded as one alternative
                found.append("{" + ",".join(f"{d}/{name}" for d in dirs) + "}"
                             if len(dirs) > 1 else f"{dirs[0]}/{name}")
    return found


def missing_results(text: str, doc: str, tracked: Collection[str],
                    scripts: Collection[str]) -> list[str]:
    """The references of ``text`` that match no file in ``tracked``."""
    missing = []
    for ref in referenced_results(text, doc, scripts):
        alternatives = _expand_braces(ref) if ref.startswith("{") else [ref]
        if not any(_present(_normalise(a), tracked) for a in alternatives):
            missing.append(ref)
    return missing


def _normalise(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def _tracked_files() -> set[str]:
    """The committed files (``git ls-files``); the checkout's files without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode()
        files = {p for p in out.split("\0") if p}
        if files:
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    return {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
            if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts}


def _scripts() -> set[str]:
    return {p.stem for p in (ROOT / "benchmarks").glob("*.py")}


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


SCRIPTS = {"real_data", "sir_scaling", "gpu_check", "compare_models"}
TRACKED = {"benchmarks/results/real_data_heaton.json",
           "benchmarks/results/real_data_era5_half_spatial.json",
           "benchmarks/results/train_profile_gp2d.json",
           "benchmarks/results/train_profile_sir.json",
           "docs/results/gp2d/eval.md", "docs/results/gp2d/eval.json",
           "docs/results/gp2d/curve.png", "docs/benchmarks.md"}


def test_the_extractor_names_a_missing_benchmark_json():
    text = ("Output: `benchmarks/results/compare_models_bogus.json`; and `real_data_heaton.json`;"
            " at the end of a sentence benchmarks/results/sir_scaling_256.json.")
    assert missing_results(text, "docs/results.md", TRACKED, SCRIPTS) == [
        "benchmarks/results/compare_models_bogus.json",
        "benchmarks/results/sir_scaling_256.json"]


def test_the_extractor_resolves_bare_names_of_benchmark_scripts():
    text = "python benchmarks/real_data.py --dataset heaton   # real_data_heatonx.json."
    assert missing_results(text, "docs/results.md", TRACKED, SCRIPTS) == [
        "benchmarks/results/real_data_heatonx.json"]
    ok = "python benchmarks/real_data.py --dataset heaton   # real_data_heaton.json"
    assert missing_results(ok, "docs/results.md", TRACKED, SCRIPTS) == []


def test_the_extractor_resolves_bare_names_against_a_docs_results_folder_on_the_line():
    ok = "### Test metrics (`docs/results/gp2d/eval.md`, `eval.json`)"
    assert missing_results(ok, "docs/results.md", TRACKED, SCRIPTS) == []
    bad = "### Test metrics (`docs/results/gp2d/eval.md`, `eval2.json`)"
    assert missing_results(bad, "docs/results.md", TRACKED, SCRIPTS) == [
        "docs/results/gp2d/eval2.json"]


def test_the_extractor_ignores_outputs_that_are_not_results():
    text = ("bsatnp predict --out pred.json; `$OUT/gpu_check.json`; "
            "`runs/gp2d/log.jsonl`; `<domain>/oracle.jsonl`; see docs/results.md")
    assert referenced_results(text, "README.md", SCRIPTS) == []


def test_the_extractor_expands_globs_braces_placeholders_and_links():
    text = ("`benchmarks/results/train_profile_{gp2d,sir,era5}.json`; "
            "--out benchmarks/results/real_data_D_spatial.json; "
            "`benchmarks/results/forward_profile_*.json`; "
            "![curve](results/gp2d/curve.png) ![gone](results/gp2d/gone.png) "
            "[costs](benchmarks.md#model-comparison) [web](https://example.org/x.json)")
    assert missing_results(text, "docs/results.md", TRACKED, SCRIPTS) == [
        "benchmarks/results/train_profile_era5.json",
        "benchmarks/results/forward_profile_*.json",
        "docs/results/gp2d/gone.png"]


def test_every_result_file_the_docs_name_is_committed():
    tracked, scripts = _tracked_files(), _scripts()
    missing = []
    for doc in _docs():
        rel = doc.relative_to(ROOT).as_posix()
        text = doc.read_text(encoding="utf-8")
        references = referenced_results(text, rel, scripts)
        missing += [f"{rel}: {ref}" for ref in missing_results(text, rel, tracked, scripts)]
        if rel in ("docs/results.md", "docs/benchmarks.md"):
            assert references, f"{rel} names no result file: the extractor is broken"
    assert not missing, "result files named in the docs but not committed:\n" + "\n".join(
        missing)
