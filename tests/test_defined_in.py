"""Each "Defined in book/<chapter>.md" in a docstring of pruninglab names a chapter that uses the name.

For a function, class or method the chapter must mention its name (as a word, in prose or code);
for a module, the module's dotted path or one of the names it defines. Where a line joins two
chapters ("Defined in book/a.md (...) and book/b.md") both must use it.

``python -m tests.test_defined_in`` lists the wrong lines; ``--fix`` rewrites each to the first
chapter (in the book's order) that uses the name, or removes the "Defined in" sentence where no chapter
does; ``--fix PATH...`` only touches files under those paths. Run it from the repository root.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFINED = re.compile(r"Defined in (book/\w+\.md)(?:\s*\([^)]*\))?(?:\s+and\s+(book/\w+\.md))?")


@dataclass(frozen=True)
class Claim:
    """One "Defined in" sentence: who claims it, which chapters it names, and where it is."""

    qualname: str  # e.g. pruninglab.sharpness.hessian_trace
    names: tuple[str, ...]  # the words that count as a use of it
    chapters: tuple[str, ...]
    path: Path
    first_line: int  # 1-based line where the object's source starts
    last_line: int


@lru_cache(maxsize=None)
def chapter_text(chapter: str) -> str:
    path = ROOT / chapter
    return path.read_text(encoding="utf-8") if path.exists() else ""


def uses(chapter: str, names: tuple[str, ...]) -> bool:
    text = chapter_text(chapter)
    return any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", text) for n in names)


def chapters_in_order() -> list[str]:
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    order = re.findall(r"(?:file|root):\s*(book/\w+)", toc)
    listed = [f"{c}.md" for c in order]
    rest = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "book").glob("*.md") if str(p.relative_to(ROOT))
                  not in listed)
    return listed + rest


def _modules() -> list[str]:
    import pruninglab

    names = ["pruninglab"]
    names += [m.name for m in pkgutil.walk_packages(pruninglab.__path__, prefix="pruninglab.")
              if not m.name.endswith("__main__")]
    return sorted(names)


def _objects(module):
    """(qualname, object, use-names) for the module and everything defined in it (classes' methods too)."""
    public = [n for n, o in vars(module).items()
              if not n.startswith("_") and getattr(o, "__module__", None) == module.__name__]
    parts = module.__name__.split(".")
    dotted = tuple({".".join(parts[i:]) for i in range(len(parts) - 1)} | {module.__name__}) if len(parts) > 1 \
        else (module.__name__,)
    yield module.__name__, module, tuple(dotted) + tuple(public)
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__ or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        yield f"{module.__name__}.{name}", obj, (name,)
        if inspect.isclass(obj):
            for mname, meth in vars(obj).items():
                if inspect.isfunction(meth) and meth.__doc__:
                    yield f"{module.__name__}.{name}.{mname}", meth, (mname, f"{name}.{mname}")


def claims() -> list[Claim]:
    out = []
    for modname in _modules():
        module = importlib.import_module(modname)
        path = Path(module.__file__)
        for qualname, obj, names in _objects(module):
            doc = obj.__doc__ if obj is module else inspect.getdoc(obj)
            if not doc:
                continue
            m = DEFINED.search(doc)
            if not m:
                continue
            if obj is module:
                first, last = 1, _module_docstring_end(path)
            else:
                try:
                    lines, start = inspect.getsourcelines(obj)
                except (OSError, TypeError):
                    continue
                first, last = start, start + len(lines) - 1
            chapters = tuple(c for c in m.groups() if c)
            out.append(Claim(qualname, names, chapters, path, first, last))
    return out


def _module_docstring_end(path: Path) -> int:
    text = path.read_text(encoding="utf-8").splitlines()
    opened = False
    for i, line in enumerate(text, 1):
        count = line.count('"""')
        if count:
            if not opened and count >= 2:
                return i
            if opened:
                return i
            opened = True
    return len(text)


def wrong_claims() -> list[tuple[Claim, str]]:
    """Every claim whose named chapter(s) do not use the name, with the reason."""
    bad = []
    for c in claims():
        missing = [ch for ch in c.chapters if not uses(ch, c.names)]
        if missing:
            reason = ", ".join(f"{ch} {'does not exist' if not chapter_text(ch) else 'does not use it'}"
                               for ch in missing)
            bad.append((c, reason))
    return bad


def fix(claim: Claim) -> str:
    """Rewrite the claim's "Defined in" sentence in its source file; returns what was done."""
    good = [ch for ch in chapters_in_order() if uses(ch, claim.names)]
    lines = claim.path.read_text(encoding="utf-8").splitlines(keepends=True)
    for i in range(claim.first_line - 1, min(claim.last_line, len(lines))):
        m = DEFINED.search(lines[i])
        if not m:
            continue
        if good:
            lines[i] = lines[i][:m.start()] + f"Defined in {good[0]}" + lines[i][m.end():]
            action = f"-> {good[0]}"
        else:
            end = m.end()
            rest = lines[i][end:]
            if rest.startswith("."):
                end += 1
                rest = lines[i][end:]
            head = lines[i][:m.start()]
            rest = rest.lstrip(" ")
            new = (head.rstrip(" ") if rest.startswith('"""') and head.strip() else head) + rest
            if new.strip() in ("", '"""'):
                # A line that held only the sentence: drop it (and a blank line after it).
                if new.strip() == "":
                    lines[i] = ""
                    if i + 1 < len(lines) and lines[i + 1].strip() == "":
                        lines[i + 1] = ""
                else:
                    lines[i] = new
            else:
                lines[i] = new
            action = "removed (no chapter uses it)"
        claim.path.write_text("".join(lines), encoding="utf-8")
        return action
    return "not found in the source lines (fix by hand)"


def test_defined_in_names_a_chapter_that_uses_the_name():
    bad = wrong_claims()
    report = "\n".join(f"{c.qualname}: {reason}" for c, reason in bad)
    assert not bad, f"{len(bad)} wrong 'Defined in' lines (python -m tests.test_defined_in --fix):\n{report}"


def test_every_chapter_named_exists():
    missing = sorted({ch for c in claims() for ch in c.chapters if not (ROOT / ch).exists()})
    assert not missing, missing


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(ROOT))
    bad = wrong_claims()
    total = len(claims())
    only = [ROOT / a for a in argv if a != "--fix"]
    if only:
        bad = [(c, r) for c, r in bad if any(c.path == o or o in c.path.parents for o in only)]
    print(f"{len(bad)} of {total} 'Defined in' lines name a chapter that does not use the name"
          + (" (in the given paths)" if only else ""))
    # Bottom-up within each file, so that a removed line does not shift the claims above it.
    for c, reason in sorted(bad, key=lambda cr: (str(cr[0].path), -cr[0].first_line)):
        line = f"{c.path.relative_to(ROOT)}:{c.first_line} {c.qualname}: {reason}"
        if "--fix" in argv:
            line += "  " + fix(c)
        print(line)
    return 1 if bad and "--fix" not in argv else 0


if __name__ == "__main__":
    raise SystemExit(main())
