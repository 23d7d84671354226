"""What a reader without our machines sees: README.md, docs/ and the committed notebook (sources and saved
outputs) name no absolute local path, their titles state what was measured, the generated sections are what
``report`` writes from the records they name, every figure in images/ is shown, every command given parses,
and the README stays short, with the result and both commands near its top."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from helpers import ROOT

from modular.lr_finder import RULE
from modular.tools.cli_args import build_parser
from modular.tools.report import render_sections

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
NOTEBOOK = ROOT / "era_s10_cifar.ipynb"
# An absolute path on some machine: a home folder (~/), a system folder, a Windows drive. Colab's Drive
# mount is allowed (the notebook tells Colab users to write it), and so is Colab's folder named bare.
LOCAL_PATH = re.compile(r"(?<![\w.~])(~/|/(?:home|root|tmp|work|Users|opt|usr|var|mnt|srv|scratch|content)/|[A-Za-z]:\\)")
ALLOWED = re.compile(r"/content/drive\b")


def local_paths(text: str) -> list[str]:
    """The absolute local paths in ``text`` (a few characters of each), Colab's Drive mount aside."""
    return [text[m.start():m.start() + 40].split("\n")[0] for m in LOCAL_PATH.finditer(text)
            if not ALLOWED.match(text, m.start())]


def output_texts(cell: dict) -> list[str]:
    """The text of every output of a code cell: streams, text MIME types, tracebacks."""
    found = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            found.append("".join(output["text"]))
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/"):
                found.append("".join(value) if isinstance(value, list) else value)
        if output["output_type"] == "error":
            found.append("\n".join(output.get("traceback", [])))
    return found


def documents() -> dict[str, str]:
    """Where -> text: the README, and each notebook cell's source and outputs."""
    texts = {"README.md": README.read_text()} | {f"docs/{p.name}": p.read_text() for p in DOCS}
    for number, cell in enumerate(json.loads(NOTEBOOK.read_text())["cells"], start=1):
        texts[f"notebook cell {number} source"] = "".join(cell["source"])
        for i, text in enumerate(output_texts(cell)):
            texts[f"notebook cell {number} output {i + 1}"] = text
    return texts


def test_no_absolute_local_path_in_the_readme_or_the_notebook():
    found = {where: paths for where, text in documents().items() if (paths := local_paths(text))}
    assert not found, "absolute local paths:\n" + "\n".join(f"{w}: {p}" for w, p in found.items())


@pytest.mark.parametrize("text, paths", [
    ("on /tmp/cifar10-official.", ["/tmp/cifar10-official."]),
    ("--output-dir ~/runs/seed0", ["~/runs/seed0"]),
    ("record: /root/runs/seed0/run.json", ["/root/runs/seed0/run.json"]),
    ("in /home/me/data and C:\\data", ["/home/me/data and C:\\data", "C:\\data"]),
    ("cd /content/era_s10_cifar", ["/content/era_s10_cifar"]),
    ('drive.mount("/content/drive"); "/content/drive/MyDrive/run"', []),
    ("runs/seed0/run.json, data/cifar10-official, ./data, 1/4 of 2.5 h, https://x.org/tmp/a", []),
])
def test_the_scan_finds_local_paths_and_nothing_else(text, paths):
    assert local_paths(text) == [p[:40] for p in paths]


def test_the_scan_reads_every_kind_of_output():
    cell = {"outputs": [{"output_type": "stream", "name": "stderr", "text": ["/work/venv/x.py:5: Warning\n"]},
                        {"output_type": "execute_result", "data": {"text/plain": "/tmp/a/b"}},
                        {"output_type": "error", "traceback": ["/home/x/y.py"]}]}
    assert [local_paths(t) != [] for t in output_texts(cell)] == [True, True, True]


def seeds_lead() -> str:
    """The Seeds section's "**mean% ± sd**"."""
    return re.search(r"<!-- seeds:start -->.*?(\*\*[\d.]+% ± [\d.]+\*\*)", README.read_text(), re.S).group(1).strip("*")


def test_the_titles_state_the_measured_accuracy():
    measured = seeds_lead()
    readme_title = README.read_text().splitlines()[0]
    notebook_title = "".join(json.loads(NOTEBOOK.read_text())["cells"][0]["source"]).splitlines()[0]
    for title in (readme_title, notebook_title):
        assert title.startswith("# ") and measured in title, title


RULE_SOURCE = "`RULE` in `modular/lr_finder.py`"


def quoted_rule(text: str) -> str | None:
    """The blockquote after the first mention of RULE_SOURCE in ``text``, its lines joined as Markdown joins
    them; None if there is none."""
    if RULE_SOURCE not in text:
        return None
    after = text.split(RULE_SOURCE, 1)[1].split("\n")
    start = next((i for i, line in enumerate(after) if line.startswith("> ")), None)
    if start is None:
        return None
    quote = []
    for line in after[start:]:
        if not line.startswith("> "):
            break
        quote.append(line[2:].strip())
    return " ".join(quote)


@pytest.mark.parametrize("document", ["README.md", "docs/experiments.md"])
def test_the_documents_quote_the_lr_rule_word_for_word(document):
    """The rule's words live in lr_finder.RULE, built from its thresholds; where a document states the rule, it
    quotes RULE, so a changed threshold fails here until the quote is updated."""
    assert quoted_rule((ROOT / document).read_text()) == RULE


def test_the_notebooks_range_test_cell_points_to_the_rule_and_restates_no_threshold():
    (cell,) = [text for where, text in documents().items()
               if where.endswith("source") and text.startswith("## ") and "LR range test" in text.splitlines()[0]]
    assert RULE_SOURCE in cell and "README" in cell
    assert not re.search(r"\d\s*%|factor of \d|factor 0", cell), "the cell restates a threshold of the rule"


def test_the_rule_in_words_names_the_thresholds_the_code_uses():
    """RULE is built from the constants choose_lr_max reads, so the words cannot keep an old threshold."""
    from modular import lr_finder

    for words in (f"factor {lr_finder.SMOOTH_F:g})", f"by {lr_finder.GIVE_BACK * 100:g}% of the drop",
                  f"by {lr_finder.MIN_RISE * 100:g}% of the starting loss", f"within {lr_finder.FLAT_DEPTH * 100:g}% of",
                  f"a factor of {lr_finder.FLAT_WIDTH:g} in LR"):
        assert words in RULE, words


def test_the_rule_quote_is_read_as_markdown_joins_it():
    text = f"... as {RULE_SOURCE} states it:\n\n> the first line\n> and the second\n\nAfter.\n> elsewhere\n"
    assert quoted_rule(text) == "the first line and the second"
    assert quoted_rule("no quote of it") is None


def generated_sections(text: str) -> dict[str, tuple[list[str], str, str]]:
    """Section name -> (the record paths its note names, the file its note writes, its Markdown) for every
    generated section of ``text``."""
    found = {}
    for name, paths, target, body in re.findall(r"<!-- ([\w-]+):start -->\n<!-- written by `python -m modular report "
                                                r"([^`]+?) --readme (\S+)`; do not edit by hand -->\n(.*?)\n<!-- \1:end -->",
                                                text, re.S):
        found[name] = (paths.split(), target, body)
    return found


def test_every_generated_section_is_what_report_writes_from_its_records():
    seen = set()
    for document in [README, *DOCS]:
        for name, (paths, target, body) in generated_sections(document.read_text()).items():
            assert target == document.relative_to(ROOT).as_posix(), f"{name}: the note names --readme {target}"
            ablations = [paths[i + 1] for i, word in enumerate(paths) if word == "--ablation"]
            runs = [word for word in paths if word != "--ablation" and word not in ablations]
            source, table = render_sections([ROOT / p for p in runs], [ROOT / p for p in ablations])[name]
            assert body == table, f"the {name} section of {target} differs from `report {' '.join(paths)}`"
            seen.add(name)
    assert seen >= {"results", "seeds", "performance", "app-latency", "ablations"}


def test_every_figure_in_images_is_shown_in_the_readme_or_docs():
    text = "".join(p.read_text() for p in [README, *DOCS])
    missing = [p.name for p in sorted((ROOT / "images").glob("*.png")) if f"images/{p.name})" not in text]
    assert not missing, missing


def test_every_link_to_a_file_of_the_repository_resolves():
    for document in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
            if "://" not in target:
                assert (document.parent / target).exists(), f"{document.name} links to {target}"


def commands(text: str) -> list[list[str]]:
    """The ``python -m modular`` command lines in the ```bash blocks of ``text``, as argument lists (shell
    variables read as 0, comments and line continuations as the shell reads them)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(re.sub(r"\$\w+", "0", line), comments=True)
            for part in " ".join(words).split(" && "):
                part = part.split()
                if part[:3] == ["python", "-m", "modular"]:
                    found.append(part[3:])
    return found


def test_every_command_given_parses():
    """Each ``python -m modular ...`` line in the README and docs is one the command line accepts as written."""
    given = [(document.name, argv) for document in [README, *DOCS] for argv in commands(document.read_text())]
    assert len(given) >= 8
    for name, argv in given:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(f"{name}: `python -m modular {' '.join(argv)}` does not parse") from None


def test_the_readme_is_short_and_opens_with_the_result_and_both_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    top = "\n".join(lines[:40])
    assert seeds_lead() in top
    assert "pip install -r requirements.txt && python -m modular train" in top
    assert "ERA_QUICK=1 python -m pytest --nbval-lax tests era_s10_cifar.ipynb" in top


def test_ci_runs_the_readmes_test_command():
    test_command = re.search(r"ERA_QUICK=1 python -m pytest [^\n`]+", README.read_text()).group(0)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_the_readme_tells_cpu_users_how_to_skip_the_cuda_build():
    assert "--index-url https://download.pytorch.org/whl/cpu" in README.read_text()


def test_the_many_runs_section_names_one_output_dir_per_run_and_the_resume_path():
    section = (ROOT / "docs" / "running.md").read_text().split("## Many runs", 1)[1].split("\n## ", 1)[0]
    for needed in ("--output-dir runs/seed$SLURM_ARRAY_TASK_ID", "--resume", "143", "SIGTERM", "python -m modular report"):
        assert needed in section, needed


def test_the_test_samples_figure_is_committed():
    assert Path(ROOT / "images" / "test_samples.png").is_file()
