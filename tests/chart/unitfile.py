"""A reader of systemd unit files, written from systemd.syntax(7) and systemd.service(5), independent
of the generator in ``imagineer_worker.systemd``: what the tests compare is what systemd would run.

Covered: sections, ``#``/``;`` comments, a trailing backslash joining the next line (replaced by a
space), repeated keys; words split on whitespace with double or single quotes and C escapes
(``\\\\ \\" \\' \\n \\t``); specifiers (only ``%%`` is expected: any other ``%x`` is an error here, a
unit must not depend on the host's specifiers) and, in ExecStart, ``$$`` for a literal ``$`` (any
``$VAR`` is an error: no variable expansion expected).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", " ": " "}


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> raw values in file order (continuations joined)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section, pending = "", ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        sections[section][key.strip()].append(value.strip())
    return {s: dict(keys) for s, keys in sections.items()}


def _specifiers(text: str) -> str:
    other = re.search(r"%[^%]", text.replace("%%", ""))
    assert other is None, f"unexpected specifier {other.group(0)!r} in {text!r}"
    return text.replace("%%", "%")


def words(value: str) -> list[str]:
    """Split like systemd's extract_first_word(EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE)."""
    out: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            return out
        word: list[str] = []
        while i < n and not value[i].isspace():
            c = value[i]
            if c in "\"'":
                end = i + 1
                while value[end] != c:
                    if value[end] == "\\":
                        word.append(_ESCAPES[value[end + 1]])
                        end += 2
                    else:
                        word.append(value[end])
                        end += 1
                i = end + 1
            elif c == "\\":
                word.append(_ESCAPES[value[i + 1]])
                i += 2
            else:
                word.append(c)
                i += 1
        out.append("".join(word))


def exec_argv(value: str) -> list[str]:
    """An ExecStart= value as the argv systemd executes (no prefixes such as ``-`` or ``@`` expected)."""
    assert value[:1] not in "-@:+!", f"unexpected ExecStart prefix in {value!r}"
    argv = []
    for word in words(_specifiers(value)):
        assert re.search(r"\$[^$]", word.replace("$$", "")) is None, f"unexpected variable in {word!r}"
        argv.append(word.replace("$$", "$"))
    return argv


def environment(values: list[str]) -> dict[str, str]:
    """Environment= lines as a dict (later assignments win, as in systemd)."""
    env: dict[str, str] = {}
    for value in values:
        for word in words(value):
            name, sep, val = _specifiers(word).partition("=")
            assert sep, f"not an assignment: {word!r}"
            env[name] = val
    return env


def systemd_analyze() -> list[str]:
    """``systemd-analyze`` (Debian's systemd package; ``make chart-test`` installs it)."""
    found = os.environ.get("SYSTEMD_ANALYZE") or shutil.which("systemd-analyze")
    if not found:
        raise AssertionError("systemd-analyze not found: install Debian's systemd package (make chart-test does)")
    return [found]


def verify(unit: Path) -> None:
    """``systemd-analyze verify``: no error and no warning (systemd exits 0 on warnings, so any output fails)."""
    proc = subprocess.run([*systemd_analyze(), "verify", "--man=no", unit.name], cwd=unit.parent,
                          capture_output=True, text=True, timeout=60)
    report = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not report, f"systemd-analyze verify {unit.name}:\n{report}"


def security_exposure(unit: Path, threshold: int) -> str:
    """``systemd-analyze security --offline``: fails above ``threshold`` tenths (its 0-10 exposure scale)."""
    proc = subprocess.run([*systemd_analyze(), "security", "--offline=yes", f"--threshold={threshold}",
                           "--no-pager", unit.name], cwd=unit.parent, capture_output=True, text=True, timeout=60)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, f"systemd-analyze security {unit.name} above {threshold / 10}:\n{proc.stdout}"
    return summary
