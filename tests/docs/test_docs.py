"""Every command, Python name, path and link that README.md and docs/*.md show is real (issue 19).

Per document (the test id names it; a failure lists every wrong name in it):

* ``python -m <module>`` commands, in code blocks and inline code: the module runs as a main
  (``importlib.util.find_spec`` finds it; a package's ``__main__``), and for moe_jax's command lines
  every ``--flag`` shown is one the module defines: absl CLIs (launch, convert) imported and their
  flags read from absl's registry (plus absl's own), plan's read from its source (it defines them
  inside ``main()``), argparse CLIs (compare, analysis.synthetic) read from their ``add_argument``
  calls, lm-eval's behind eval.lm_eval from its parser (its ``run --help`` in a subprocess if that
  parser is not where this test looks); ``python <launch|benchmarks|scripts>/x.py`` commands: the
  file exists and defines each flag shown; a flag shown on its own is defined by some command line;
* ``--config.<section>.<field>`` overrides, and ``config.<section>.<field>`` names in inline code,
  exist in ``moe_jax.pipeline.registry.default_config()`` (free-form mappings such as ``config.tasks``
  accept any key below them);
* dotted ``moe_jax.a.b.c`` names in inline code and in Python code blocks resolve (the longest
  importable module prefix imported, the rest looked up as attributes), and so do the names a
  Python block imports with ``from moe_jax... import ...`` and the attributes it uses of them;
* repository paths (``configs/``, ``docs/``, ``notebooks/``, ``benchmarks/``, ``launch/``,
  ``scripts/``, ``moe_jax/``, ``tests/``, ``.ci/``) exist; a test file may live in any folder under
  ``tests/`` (the suite is being arranged into folders), so it is looked up by its name;
* every relative link points to an existing file, and its ``#anchor`` to a heading of that file;
* README.md has at most 200 lines and keeps its two set-up commands byte for byte (.ci/run and the
  newcomer rely on them).

No model runs and no subprocess starts (the command lines' imports cost seconds each): imports,
``find_spec`` and reading files only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT


ROOT = Path(REPO_ROOT)
DOCS = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))

README_MAX_LINES = 200
SETUP_COMMANDS = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
    "python -m moe_jax.launch --config=configs/demo.py --workdir=runs/demo",
    '. .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q -n 2 tests',
)

# Command lines whose flags are checked, and how to list them.
# absl CLI -> the module that defines its flags at import
ABSL_CLIS = {"moe_jax.launch": "moe_jax.launch", "moe_jax.convert": "moe_jax.convert.__main__"}
ABSL_BUILTINS = {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok"}
# CLIs whose flags are all literals in their own file (argparse add_argument, or absl DEFINE_* inside main())
READ_CLIS = {"moe_jax.plan": "moe_jax/plan.py", "moe_jax.compare": "moe_jax/compare.py",
             "moe_jax.analysis.synthetic": "moe_jax/analysis/synthetic.py"}
LM_EVAL_CLI = "moe_jax.eval.lm_eval"  # lm-eval's command line: the options of its default command, run
CLIS = set(ABSL_CLIS) | set(READ_CLIS) | {LM_EVAL_CLI}

# Flags of tools outside this repository that the docs show on their own (each with its tool).
EXTERNAL_FLAGS = {
    "durations": "pytest (CI prints the slowest tests)",
    "default-bucket": "gcp-storage-emulator (the GCS emulator the tests start)",
    "worker": "gcloud compute tpus tpu-vm ssh/scp",
}
# Names shown on purpose that are not in the code. Keep this short, each with its reason. Placeholders
# need no entry: spans with <...>, ... or * are skipped, and DIR, CKPT_DIR, HF_DIR are values, never names.
ALLOWED: dict[str, str] = {
}

# Config mappings whose keys are the user's own (any key below them is accepted).
FREE_FORM = {"tasks", "mesh.rules", "mesh.shape", "model.tiny.overrides", "analysis.accuracy",
             "analysis.task_stores", "eval.languages", "eval.data_dirs"}
SECTIONS = ("model", "data", "tasks", "collect", "mesh", "distributed", "plan", "eval", "analysis", "steer",
            "report", "stages")
# Without the "config." prefix only these are read as config names (``model.generate`` is the model's method).
BARE_SECTIONS = ("collect", "mesh", "distributed", "eval", "analysis", "steer")
FILE_SUFFIXES = {"json", "py", "md", "csv", "npz", "lock", "tmp", "txt", "html", "png", "jsonl", "yaml"}
PATH_PREFIXES = ("configs/", "docs/", "notebooks/", "benchmarks/", "launch/", "scripts/", "moe_jax/", "tests/",
                 ".ci/")


# -- reading a document -------------------------------------------------------------------------------------

FENCE = re.compile(r"^[ \t]*```([\w-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)  # also in a list item


@functools.lru_cache(maxsize=None)
def _parsed(doc: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(prose without code blocks, ((language, code), ...))."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = tuple((m.group(1), m.group(2)) for m in FENCE.finditer(text))
    return FENCE.sub("\n", text), blocks


def _inline(doc: str) -> list[str]:
    prose, _ = _parsed(doc)
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]


def _code_texts(doc: str) -> list[str]:
    """Inline code spans and code blocks, shell line continuations joined."""
    _, blocks = _parsed(doc)
    return _inline(doc) + [code.replace("\\\n", " ") for _, code in blocks]


def _skip(name: str) -> bool:
    return name in ALLOWED or "<" in name or "..." in name or "*" in name


# -- (a) commands -------------------------------------------------------------------------------------------

COMMAND = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)([^\n]*)")


def _commands(doc: str) -> list[tuple[str, list[str]]]:
    """[(module, [flag name, ...])] of every ``python -m`` command the document shows."""
    return [(m.group(1), _flags_in(m.group(2))) for text in _code_texts(doc) for m in COMMAND.finditer(text)]


SCRIPT = re.compile(r"\bpython3?\s+((?:launch|benchmarks|scripts)/[\w/]+\.py)([^\n]*)")


def _flags_in(args: str) -> list[str]:
    args = re.sub(r"'\{[^']*\}'", "X", args)  # --config.mesh.shape='{"data": -1, ...}'
    args = re.split(r"&&|;|\||'|\"|`", args)[0]
    args = re.split(r"(?<!\S)--(?!\S)", args)[0]  # what follows a bare -- is passed on (to the pipeline)
    return [f.rstrip(".:") for f in re.findall(r"(?<![\w-])--([A-Za-z][^\s=\[\]|,)]*)", args)]


def _script_commands(doc: str) -> list[tuple[str, list[str]]]:
    """[(script path, [flag name, ...])] of every ``python <launch|benchmarks|scripts>/x.py`` command."""
    return [(m.group(1), _flags_in(m.group(2))) for text in _code_texts(doc) for m in SCRIPT.finditer(text)]


@functools.lru_cache(maxsize=None)
def _script_flags(path: str) -> frozenset[str]:
    """The options a script of the repository defines (argparse ``"--name"`` literals, read, not run:
    the benchmarks import torch before they parse their arguments)."""
    return frozenset(re.findall(r"""["']--([A-Za-z][\w-]*)["']""", (ROOT / path).read_text(encoding="utf-8")))


def _runnable(module: str) -> bool:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # benchmarks/ runs as a namespace package from the root
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:  # a package runs its __main__
        try:
            return importlib.util.find_spec(module + ".__main__") is not None
        except ModuleNotFoundError:
            return False
    return True


def _absl_flags(module: str) -> set[str]:
    from absl import flags
    importlib.import_module(module)  # defines its flags (its main() runs only as __main__)
    by_module = flags.FLAGS.flags_by_module_dict()
    found = {f.name for m in (module, "absl.app", "absl.logging") for f in by_module.get(m, ())}
    assert found, f"no absl flags registered by {module}"
    return found | {"no" + f.name for f in by_module.get(module, ()) if f.boolean} | ABSL_BUILTINS


def _read_flags(path: str) -> set[str]:
    text = (ROOT / path).read_text(encoding="utf-8")
    found = set(re.findall(r"""["']--([A-Za-z][\w-]*)["']""", text))  # argparse
    defined = re.findall(r"""DEFINE_(\w+)\(\s*["'](\w+)["']""", text)  # absl
    found |= {name for _, name in defined} | {"no" + name for kind, name in defined if kind == "bool"}
    assert found, f"no flags found in {path}"
    return found | {"help"} | (ABSL_BUILTINS if defined else set())


def _lm_eval_flags() -> set[str]:
    import argparse
    try:
        from lm_eval._cli import HarnessCLI
        parser = HarnessCLI()._parser
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        text = " ".join(o for a in sub.choices["run"]._actions for o in a.option_strings)
    except (ImportError, AttributeError, KeyError, StopIteration):  # another lm-eval: ask its command line
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   JAX_PLATFORMS="cpu")
        text = subprocess.run([sys.executable, "-m", LM_EVAL_CLI, "run", "--help"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600).stdout
    found = set(re.findall(r"(?<![\w-])--([A-Za-z][\w-]*)", text))
    assert found, "no lm-eval options found"
    return found


@functools.lru_cache(maxsize=None)
def _defined_flags(module: str) -> frozenset[str]:
    if module in ABSL_CLIS:
        return frozenset(_absl_flags(ABSL_CLIS[module]))
    if module in READ_CLIS:
        return frozenset(_read_flags(READ_CLIS[module]))
    assert module == LM_EVAL_CLI, module
    return frozenset(_lm_eval_flags())


# -- config names -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _default_config():
    from moe_jax.pipeline.registry import default_config
    return default_config()


def _config_problem(path: str) -> str | None:
    """None if ``path`` (``section.field...``, no ``config.`` prefix) names a config field."""
    import ml_collections
    node = _default_config()
    parts = [p for p in path.split(".") if p]
    for i, part in enumerate(parts):
        here = ".".join(parts[:i])
        if here in FREE_FORM:
            return None
        if not isinstance(node, ml_collections.ConfigDict):
            return f"config.{here} is a value, not a section"
        if part not in node:
            return f"config.{here + '.' if here else ''}{part} is not a field of default_config()"
        node = node[part]
    return None


CONFIG_NAME = re.compile(r"^(?:config\.((?:%s)(?:\.\w+)*)|(%s)\.(\w+(?:\.\w+)*))(?:$|=|\s|\(|\*)"
                         % ("|".join(SECTIONS), "|".join(BARE_SECTIONS)))


def _config_names(doc: str) -> list[str]:
    """``section.field`` of every ``--config.x.y`` in code and every ``config.x.y`` / ``steer.x`` span."""
    names = []
    for text in _code_texts(doc):
        names += re.findall(r"(?<![\w-])--config\.([\w.<>]+)", text)
    for span in _inline(doc):
        m = CONFIG_NAME.match(span)
        if m:
            names.append(m.group(1) or f"{m.group(2)}.{m.group(3)}")
    names = [n.rstrip(".") for n in names]
    return [n for n in names if n.rsplit(".", 1)[-1] not in FILE_SUFFIXES]  # `collect.py` is a file


# -- (b) Python names ---------------------------------------------------------------------------------------

def _resolve(name: str) -> str | None:
    """None if the dotted ``name`` resolves, else why not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        mod_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name is not None and mod_name != e.name and not mod_name.startswith(e.name + "."):
                return f"importing {mod_name} fails: {e}"
            continue
        except Exception as e:  # noqa: BLE001  a module that exists but does not import
            return f"importing {mod_name} fails: {type(e).__name__}: {e}"
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                try:  # a submodule not imported by its package
                    obj = importlib.import_module(".".join(parts[:j + 1]))
                    continue
                except ModuleNotFoundError:
                    return f"{'.'.join(parts[:j])} has no attribute {attr}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]}"


DOTTED = re.compile(r"(?<![\w./-])(moe_jax(?:\.\w+)+)(?![\w/-])")


def _python_names(doc: str) -> list[str]:
    names = []
    for span in _inline(doc):
        m = re.match(r"moe_jax(?:\.\w+)+", span)
        if m and not span[m.end():].startswith("/"):
            names.append(m.group(0))
    _, blocks = _parsed(doc)
    for lang, code in blocks:
        if lang != "python":
            continue
        names += DOTTED.findall(code)
        aliases = {}
        for mod, imported in re.findall(r"^\s*from\s+(moe_jax[\w.]*)\s+import\s+([^\n#]+)", code, re.M):
            for item in imported.strip("() ").split(","):
                item = item.strip()
                if not item:
                    continue
                real, _, alias = item.partition(" as ")
                names.append(f"{mod}.{real.strip()}")
                aliases[(alias or real).strip()] = f"{mod}.{real.strip()}"
        for alias, full in aliases.items():
            names += [f"{full}.{attr}" for attr in re.findall(rf"(?<![\w.]){re.escape(alias)}\.(\w+)", code)]
        names += re.findall(r"^\s*import\s+(moe_jax[\w.]*)", code, re.M)
    return [n for n in names if n.rsplit(".", 1)[-1] not in FILE_SUFFIXES]


# -- (c) paths ----------------------------------------------------------------------------------------------

PATH = re.compile(r"(?<![\w./~$-])((?:%s)[\w./<>*-]*)" % "|".join(re.escape(p) for p in PATH_PREFIXES))


def _paths(doc: str) -> list[str]:
    found = []
    for text in _code_texts(doc):
        found += [p.rstrip(".:,") for p in PATH.findall(text)]
    return found


@functools.lru_cache(maxsize=None)
def _test_files() -> frozenset[str]:
    return frozenset(p.name for p in (ROOT / "tests").rglob("*.py"))


def _path_problem(path: str) -> str | None:
    if (ROOT / path).exists():
        return None
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if path.startswith("tests/") and path.endswith(".py") and name in _test_files():
        return None  # moved into a folder of tests/
    return f"{path} does not exist"


# -- (d) links ----------------------------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset[str]:
    if path.suffix != ".md":
        return frozenset()
    text = FENCE.sub("\n", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        s = _slug(heading)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return frozenset(out)


def _links(doc: str) -> list[str]:
    prose, _ = _parsed(doc)
    prose = re.sub(r"`[^`]*`", "", prose)
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose)


def _link_problem(doc: str, link: str) -> str | None:
    if re.match(r"[a-z]+:", link):  # https:, mailto:
        return None
    target, _, anchor = link.partition("#")
    path = (ROOT / doc).parent / target if target else ROOT / doc
    if not path.exists():
        return f"[...]({link}): {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} does not exist"
    if anchor and path.suffix == ".md" and anchor not in _anchors(path.resolve()):
        return f"[...]({link}): no heading with the anchor #{anchor} in {target or doc}"
    return None


# -- the tests ----------------------------------------------------------------------------------------------

def _report(doc: str, problems: list[str]) -> None:
    assert not problems, f"{doc}:\n  " + "\n  ".join(dict.fromkeys(problems))


@pytest.mark.parametrize("doc", DOCS)
def test_inline_code_is_balanced(doc):
    """An unpaired backtick would shift every span after it, and the checks below would read prose as code."""
    prose, _ = _parsed(doc)
    bad = [i + 1 for i, line in enumerate(prose.split("\n\n")) if line.count("`") % 2]
    assert not bad, f"{doc}: an odd number of backticks in paragraphs {bad} (counting paragraphs without code blocks)"


@pytest.mark.parametrize("doc", DOCS)
def test_commands_run_and_their_flags_exist(doc):
    problems = []
    for module, flags in _commands(doc):
        if not _runnable(module):
            problems.append(f"python -m {module}: no such module (or package without __main__)")
            continue
        if module not in CLIS:
            if module.startswith("moe_jax") and flags:
                problems.append(f"python -m {module}: not a known moe_jax command line (add it to this test)")
            continue
        defined = _defined_flags(module)
        for flag in flags:
            if _skip(flag):
                continue
            if flag.startswith("config."):
                if "config" not in defined:
                    problems.append(f"python -m {module} --{flag}: {module} has no --config")
            elif flag not in defined:
                problems.append(f"python -m {module} --{flag}: no such flag")
    _report(doc, problems)


@pytest.mark.parametrize("doc", DOCS)
def test_script_commands_exist_and_their_flags_are_defined(doc):
    problems = []
    for path, flags in _script_commands(doc):
        if not (ROOT / path).is_file():
            problems.append(f"python {path}: no such file")
            continue
        problems += [f"python {path} --{f}: no such option" for f in flags
                     if not _skip(f) and f not in _script_flags(path)]
    _report(doc, problems)


def _every_flag() -> set[str]:
    """Every option some command line of the repository defines."""
    names = set(EXTERNAL_FLAGS)
    for module in sorted(CLIS):
        names |= _defined_flags(module)
    for folder in ("launch", "benchmarks", "scripts"):
        for path in (ROOT / folder).glob("*.py"):
            names |= _script_flags(str(path.relative_to(ROOT)))
    return names


@pytest.mark.parametrize("doc", DOCS)
def test_flags_shown_on_their_own_are_defined(doc):
    """A span such as `--dry_run` or `--overwrite`: some command line of the repository defines it."""
    spans = [s for s in _inline(doc) if s.startswith("--")]
    flags = [f for s in spans for f in _flags_in(s) if not f.startswith("config.") and not _skip(f)]
    known = _every_flag() if flags else set()
    _report(doc, [f"--{f}: no command line defines it" for f in flags if f not in known])


@pytest.mark.parametrize("doc", DOCS)
def test_stage_names_in_stages_flags_exist(doc):
    from moe_jax.pipeline.registry import STAGES
    problems = []
    for text in _code_texts(doc):
        for value in re.findall(r"(?<![\w-])--stages=([\w,]+)", text):
            problems += [f"--stages={value}: no stage {name}" for name in value.split(",")
                         if name and name not in STAGES]
    _report(doc, problems)


@pytest.mark.parametrize("doc", DOCS)
def test_config_fields_exist(doc):
    problems = []
    for name in _config_names(doc):
        if _skip(name) or _skip("config." + name):
            continue
        problem = _config_problem(name)
        if problem:
            problems.append(problem)
    _report(doc, problems)


def _config_leaves(node, prefix: str = "") -> dict[str, str]:
    """{section.field: repr of its default} of every field (an empty mapping is one field)."""
    import ml_collections
    out = {}
    for key, value in node.items():
        path = prefix + key
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            out.update(_config_leaves(value, path + "."))
        else:
            out[path] = repr(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)
    return out


def test_pipeline_doc_lists_every_option_with_its_default():
    """docs/pipeline.md's "Options of every stage" tables: one row per field of default_config(), with
    its default as the code has it (a field added, removed or changed in the code shows here)."""
    text = (ROOT / "docs/pipeline.md").read_text(encoding="utf-8")
    part = text.split("\n## Options of every stage\n", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for section, table in re.findall(r"^### `config\.(\w+)`\n(.*?)(?=^### |\Z)", part, re.M | re.S):
        for field, default in re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", table, re.M):
            documented[section if field == section else f"{section}.{field}"] = default
    actual = _config_leaves(_default_config())
    missing = sorted(set(actual) - set(documented))
    unknown = sorted(set(documented) - set(actual))
    wrong = sorted(f"{k}: documented {documented[k]}, default_config() has {actual[k]}"
                   for k in set(actual) & set(documented) if documented[k] != actual[k])
    assert not (missing or unknown or wrong), (f"docs/pipeline.md options: not listed {missing}; not in the code "
                                               f"{unknown}; defaults differ {wrong}")


@pytest.mark.parametrize("doc", DOCS)
def test_python_names_resolve(doc):
    problems = []
    for name in _python_names(doc):
        if _skip(name):
            continue
        problem = _resolve(name)
        if problem:
            problems.append(f"{name}: {problem}")
    _report(doc, problems)


@pytest.mark.parametrize("doc", DOCS)
def test_repository_paths_exist(doc):
    problems = [p for p in (_path_problem(x) for x in _paths(doc) if not _skip(x)) if p]
    _report(doc, problems)


@pytest.mark.parametrize("doc", DOCS)
def test_links_point_to_existing_files_and_headings(doc):
    problems = [p for p in (_link_problem(doc, link) for link in _links(doc)) if p]
    _report(doc, problems)


@pytest.mark.parametrize("doc", DOCS)
def test_cites_nothing_outside_the_repository(doc):
    """Docs are read without the project's private notes: no ../shared/ path, no "METHODS Eq. N"."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    found = re.findall(r"\.\./shared\b|\bMETHODS\b[^\n]{0,20}?\bEq\.?\s*\d+", text)
    assert not found, f"{doc} cites {found}"


def test_readme_is_short_and_keeps_its_two_setup_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    for command in SETUP_COMMANDS:
        assert command in lines, f"README.md lost its set-up command, byte for byte: {command}"


def test_every_doc_is_linked_from_the_readme():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in _links("README.md")}
    missing = [d for d in DOCS[1:] if (ROOT / d).resolve() not in linked]
    assert not missing, f"README.md links no: {missing}"


def test_the_checks_see_what_they_check():
    """The extractors find the names they are meant to (a regex that matched nothing would pass)."""
    assert ("moe_jax.launch", ["config", "workdir"]) in _commands("README.md")
    assert ("launch/tpu_vm.py", ["name", "zone", "accelerator", "config", "dry_run"]) in _script_commands("docs/tpu.md")
    assert {"dry_run", "overwrite", "xla", "helpfull", "model_args"} <= _every_flag()
    assert {"config", "workdir", "stages", "helpfull"} <= _defined_flags("moe_jax.launch")
    assert {"hf_dir", "out", "dtype", "overwrite", "nooverwrite"} <= _defined_flags("moe_jax.convert")
    assert {"config", "accelerator", "xla", "noxla"} <= _defined_flags("moe_jax.plan")
    assert {"workdirs", "out"} <= _defined_flags("moe_jax.compare")
    assert {"model", "model_args", "tasks", "output_path"} <= _defined_flags("moe_jax.eval.lm_eval")
    assert "no_such_flag" not in _every_flag()
    assert "eval.limit" in _config_names("README.md")
    assert "moe_jax.models.decoder.forward" in _python_names("docs/api.md")
    assert "moe_jax.models.generate.prefill" in _python_names("docs/api.md")  # through its alias `gen`
    assert "configs/demo.py" in _paths("README.md")
    assert "docs/models.md" in _links("README.md")
    assert _resolve("moe_jax.no_such_name") is not None
    assert _config_problem("collect.batchsize") is not None
    assert _link_problem("README.md", "docs/models.md#no-such-heading") is not None
    assert _slug("Evaluation (the `eval` stage)") == "evaluation-the-eval-stage"
    assert _slug("A `gs://` workdir that cannot be reached fails fast") == "a-gs-workdir-that-cannot-be-reached-fails-fast"
