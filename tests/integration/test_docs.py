"""The documentation against the code, so neither can drift from the other:

- every fault type and its parameters, every config key, every metric name and label, every
  command-line flag and every HTTP route segment that the code knows appears in docs/ (read
  from the code's own lists with regular expressions, not from a hand-kept copy), and every
  admin route docs/admin-api.md lists answers with its documented status on a running proxy;
- every relative link and #anchor in README.md and docs/*.md resolves inside the repository
  (GitHub's heading-slug rules), and nothing points outside it (no network);
- `cmake --install BUILD --prefix P` installs bin/tcpfault, which runs, and a manual page that
  `man -l` renders without warnings and that names every flag;
- the README's "Building by hand" commands are the ones tests/run-all.sh (so CI) builds with,
  and they configure the build types the README promises.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from admin_helpers import start_with_admin
from helpers import BIN, SOURCE_DIR, connect, run_tcpfault

DOCS = SOURCE_DIR / "docs"
README = SOURCE_DIR / "README.md"


def source(*globs: str) -> str:
    """The concatenated text of the source files matching the globs (relative to the repo)."""
    files = sorted({p for g in globs for p in SOURCE_DIR.glob(g)})
    assert files, f"no source file matches {globs}"
    return "\n".join(p.read_text() for p in files)


def doc(name: str) -> str:
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is missing"
    return path.read_text()


def all_docs() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))


def strings(text: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', text)


def cpp_list(text: str, name: str, where: str) -> str:
    """The body of `name = { ... };` in C++ source (nested braces allowed, no `};` inside)."""
    m = re.search(rf"\b{name}\s*=\s*\{{(.*?)\}};", text, re.S)
    if not m:
        pytest.fail(f"cannot find the list {name} in {where}: the code changed shape; update "
                    f"the extraction in tests/integration/test_docs.py", pytrace=False)
    return m.group(1)


def missing_report(what: str, missing: list[str], where: str) -> str:
    return (f"{len(missing)} {what} known to the code but not documented in {where}: "
            + ", ".join(missing))


def code_span(word: str) -> str:
    return f"`{word}`"


# ---------------------------------------------------------------------------------------------
# what the code knows


def fault_types_and_params() -> dict[str, list[str]]:
    """From the one list (faults/fault_list.hpp's variant) and each kind's own header:
    `kName = "reset"` and `kParams{std::string_view{"to"}, ...}`."""
    listed = re.search(r"using FaultSpec\s*=\s*std::variant<([^>]*)>",
                       source("faults/fault_list.hpp"))
    assert listed, "cannot find FaultSpec in faults/fault_list.hpp: update test_docs.py"
    structs = [w.strip() for w in listed.group(1).split(",")]
    kinds = {}
    for header in sorted(SOURCE_DIR.glob("faults/*.hpp")):
        text = header.read_text()
        for struct in structs:
            m = re.search(rf"struct {struct} \{{(.*?)\n\}};", text, re.S)
            if not m:
                continue
            body = m.group(1)
            name = re.search(r'kName\s*=\s*"(\w+)"', body)
            params = re.search(r"kParams(?:\{|\s*=)(.*?);", body, re.S)
            assert name and params, f"{header.name}: {struct} lacks kName/kParams"
            kinds[name.group(1)] = strings(params.group(1))
    assert len(kinds) == len(structs) >= 12, (
        f"found {sorted(kinds)} for the {len(structs)} kinds in faults/fault_list.hpp: update "
        f"the extraction in test_docs.py")
    return kinds


def config_keys() -> list[str]:
    """Every key of every mapping the loader reads, as its label: `admin.listen`,
    `match.schedule.every`, ... (`name`, `listen`, ... for proxies and rules: no prefix)."""
    src = source("config/*.cpp")
    # Fields::read(r, node, where, {"what", "in what", "label.prefix.", keys})
    specs = re.findall(r'\{\s*"[^"]*",\s*"(?:in|at) [^"]*",\s*"([a-z_.]*)",\s*'
                       r'(k\w+|\{[^{}]*\})\s*\}', src)
    assert len(specs) >= 9, f"found only {len(specs)} Fields::read specs: update test_docs.py"
    keys = []
    for prefix, body in specs:
        listed = strings(body) if body.startswith("{") else strings(cpp_list(src, body, "config"))
        keys += [prefix + k for k in listed]
    for must in ("admin.listen", "log.level", "toxiproxy.listen", "seed", "upstream",
                 "match.schedule.every", "when.after_bytes"):
        assert must in keys, f"the extraction missed {must}: update test_docs.py"
    return sorted(set(keys)) + ["fault.type"]


def metric_names() -> list[str]:
    names = re.findall(r'\.Name\("(tcpfault_\w+)"\)', source("observe/metrics.cpp"))
    assert len(names) >= 9, f"found only {len(names)} metric names: update test_docs.py"
    return names


def metric_labels() -> list[str]:
    """Label names and the label values the code spells out."""
    text = source("observe/metrics.cpp", "observe/metrics.hpp")
    pairs = re.findall(r'\{"(\w+)",\s*("\w+"|\w+)\}', text)
    names = {n for n, _ in pairs}
    values = {v.strip('"') for _, v in pairs if v.startswith('"')}
    for arr in ("kRejectReasons", "kUpstreamErrors"):
        values |= set(strings(cpp_list(text, arr + r"\[\]", "observe/metrics.hpp")))
    assert {"proxy", "rule", "reason"} <= names, f"label extraction failed: {names}"
    return sorted(names | values)


def route_segments(path: str) -> list[str]:
    segs = re.findall(r'parts\[\d\]\s*[!=]=\s*"([^"]+)"', source(path))
    assert len(segs) >= 4, f"found only {segs} in {path}: update test_docs.py"
    return sorted(set(segs))


def cli_flags() -> list[str]:
    flags = re.findall(r'\ba\s*==\s*"(-[-\w]*)"', source("app/cli.cpp"))
    assert len(flags) >= 10, f"found only {flags} in app/cli.cpp: update test_docs.py"
    return sorted(set(flags))


def mentions_flag(text: str, flag: str) -> bool:
    # Markdown writes -c; roff writes \-c (and \-\-check).
    roff = flag.replace("-", r"\-")
    return any(re.search(rf"(?<![\w\\-]){re.escape(f)}(?![\w-])", text) for f in (flag, roff))


def section(text: str, heading_re: str) -> str:
    """The text under the first `## ` heading matching heading_re, up to the next `## `."""
    m = re.search(rf"^## +{heading_re} *$(.*?)(?=^## |\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


# ---------------------------------------------------------------------------------------------
# code -> docs


@pytest.mark.timeout(30)
def test_every_fault_type_has_a_section_with_its_parameters():
    faults = doc("faults.md")
    problems = []
    for ftype, params in fault_types_and_params().items():
        body = section(faults, rf"`{re.escape(ftype)}`")
        if not body:
            problems.append(f"no section '## `{ftype}`'")
            continue
        # Each parameter is a row of the section's table: | `name` | values | default |
        problems += [f"{ftype}: parameter `{p}`" for p in params
                     if not re.search(rf"^\|\s*`{re.escape(p)}`\s*\|", body, re.M)]
    assert not problems, missing_report("fault types or parameters", problems, "docs/faults.md")


@pytest.mark.timeout(30)
def test_every_config_key_is_in_config_md():
    text = doc("config.md")
    missing = [k for k in config_keys() if code_span(k) not in text]
    assert not missing, missing_report("config keys", missing, "docs/config.md")
    types = [t for t in fault_types_and_params() if code_span(t) not in text]
    assert not types, missing_report("fault types", types, "docs/config.md (fault.type)")


@pytest.mark.timeout(30)
def test_every_metric_and_label_is_in_metrics_md():
    text = doc("metrics.md")
    missing = [m for m in metric_names() + metric_labels() if code_span(m) not in text]
    assert not missing, missing_report("metric names or labels", missing, "docs/metrics.md")


@pytest.mark.timeout(30)
def test_every_route_segment_is_documented():
    problems = []
    admin = doc("admin-api.md")
    for seg in route_segments("api/admin_api.cpp"):
        if not re.search(rf"/{re.escape(seg)}(?![\w-])", admin):
            problems.append(f"/{seg} (admin API, docs/admin-api.md)")
    everything = all_docs()
    for seg in route_segments("api/toxiproxy_api.cpp"):
        if not re.search(rf"/{re.escape(seg)}(?![\w-])", everything):
            problems.append(f"/{seg} (Toxiproxy API, docs/)")
    assert not problems, missing_report("route segments", problems, "the docs")


@pytest.mark.timeout(30)
def test_every_flag_is_in_cli_md_and_the_manual_page():
    cli = doc("cli.md")
    man = (DOCS / "tcpfault.1.in").read_text()
    missing = [f"{f} (cli.md)" for f in cli_flags() if not mentions_flag(cli, f)]
    missing += [f"{f} (tcpfault.1.in)" for f in cli_flags() if not mentions_flag(man, f)]
    assert not missing, missing_report("flags", missing, "docs/")


@pytest.mark.timeout(60)
def test_documented_admin_routes_answer_as_documented(tcpfault, servers):
    """docs -> code: each `METHOD /path` row of docs/admin-api.md's first table, run against a
    proxy `p` with a rule `r`, answers with the status its row documents."""
    table = re.split(r"^## ", doc("admin-api.md"), flags=re.M)[0]
    rows = re.findall(r"^\|\s*`(GET|POST|PUT|DELETE|PATCH) (/[^`\s]*)`\s*\|[^|]*\|\s*(\d{3})",
                      table, re.M)
    assert len(rows) >= 12, f"found only {len(rows)} routes in docs/admin-api.md's table"
    bodies = {
        ("POST", "/api/proxies/{p}/rules"):
            {"name": "doc-added", "fault": {"type": "latency", "delay": "1ms"}},
        ("PUT", "/api/proxies/{p}/rules/{r}"):
            {"name": "r", "fault": {"type": "latency", "delay": "2ms"}},
        ("POST", "/api/proxies/{p}/connections/{id}/fault"):
            {"type": "latency", "delay": "1ms"},
    }
    # Connection {id} is lifted, then reset, before the restart resets every connection;
    # deleting comes last, so every other call still finds the rule.
    order = {("DELETE", "/api/proxies/{p}/connections/{id}/fault"): 1,
             ("DELETE", "/api/proxies/{p}/connections/{id}"): 2,
             ("POST", "/api/proxies/{p}/restart"): 3}
    rows.sort(key=lambda row: order.get(row[:2], 4 if row[0] == "DELETE" else 0))
    echo = servers.echo()
    proc, admin = start_with_admin(
        tcpfault, [{"name": "p", "upstream": echo.addr,
                    "rules": ["{name: r, fault: {type: latency, delay: 1ms}}"]}])
    # {id}: an open connection of proxy p, connected to its upstream.
    client = connect(proc.addr("p"))
    local = "%s:%d" % client.getsockname()[:2]
    deadline = time.monotonic() + 5
    while True:
        conns = [c for c in admin.request("GET", "/api/proxies/p/connections").json()
                 if c["client"] == local and c["state"].startswith("open")]
        if conns or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # polled: the listing is the only way to see it connected
    assert conns, f"connection from {local} not listed as open"
    wrong = []
    with client:
        for method, path, status in rows:
            url = path.replace("{p}", "p").replace("{r}", "r").replace("{id}", str(conns[0]["id"]))
            r = admin.request(method, url, body=bodies.get((method, path)))
            if r.status != int(status):
                wrong.append(f"{method} {url}: {r.status} {r.body[:200]!r}, documented {status}")
    assert not wrong, "documented admin routes that do not answer as documented:\n" + \
        "\n".join(wrong)
    assert proc.stop(10) == 0


# ---------------------------------------------------------------------------------------------
# links


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup reduced to its text, lower case, every
    character but letters, digits, spaces, '-' and '_' dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def without_code(text: str) -> str:
    """The text with fenced code blocks blanked (line numbers kept)."""
    out, fence = [], None
    for line in text.splitlines():
        m = re.match(r"^\s*(```+|~~~+)", line)
        if fence is None and m:
            fence = m.group(1)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in without_code(path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for no, line in enumerate(without_code(path.read_text()).splitlines(), 1):
        line = re.sub(r"(`+)(?:(?!\1).)+\1", "", line)  # inline code spans
        out += [(no, t) for t in re.findall(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)", line)]
        m = re.match(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", line)  # reference definitions
        if m:
            out.append((no, m.group(1)))
    return out


def link_problems(path: Path, root: Path) -> list[str]:
    problems = []
    for no, target in links(path):
        where = f"{path.relative_to(root)}:{no}: {target}"
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # http(s), mailto: not checked here (no network)
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if dest != root and root not in dest.parents:
            problems.append(f"{where}: points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: {dest.relative_to(root)} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in "
                            f"{dest.relative_to(root)}")
    return problems


@pytest.mark.timeout(60)
def test_links_in_readme_and_docs_resolve():
    root = SOURCE_DIR.resolve()
    pages = [README] + sorted(DOCS.glob("*.md"))
    checked = sum(len(links(p)) for p in pages)
    assert checked >= 50, f"only {checked} links found: the link extraction is broken"
    problems = [p for page in pages for p in link_problems(page, root)]
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.timeout(30)
def test_no_reference_leaves_the_repository():
    offenders = [f"{p.relative_to(SOURCE_DIR)}:{no}: {line.strip()}"
                 for p in [README] + sorted(DOCS.glob("*"))
                 for no, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"\.\./shared|/work/shared|SPEC\.md", line)]
    assert not offenders, "references to files outside the repository:\n" + "\n".join(offenders)


def test_the_link_checker_catches_what_it_should(tmp_path):
    """The checker itself: a broken file, a broken anchor and a link out of the tree are found;
    GitHub's slugs for code, punctuation and repeated headings are matched."""
    (tmp_path / "a.md").write_text(
        "# Title\n## `slow_close`\n## Quick start (fresh Debian 12, as root)\n## Dup\n## Dup\n"
        "[ok](#slow_close) [ok](#quick-start-fresh-debian-12-as-root) [ok](#dup-1)\n"
        "[ok](b.md#b-section) [bad](#nope) [bad](missing.md) [bad](../outside.md)\n"
        "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n[ref]: b.md#nope\n")
    (tmp_path / "b.md").write_text("## B section\n")
    found = link_problems(tmp_path / "a.md", tmp_path)
    assert len(found) == 4, found
    assert any("#nope in a.md" in p for p in found) and any("missing.md" in p for p in found)
    assert any("outside the repository" in p for p in found)
    assert any("#nope in b.md" in p for p in found)


# ---------------------------------------------------------------------------------------------
# cmake --install and the manual page


def build_dir() -> Path:
    d = BIN.resolve().parent
    if not (d / "CMakeCache.txt").is_file():
        pytest.skip(f"{BIN} is not in a CMake build tree; nothing to install")
    return d


@pytest.mark.timeout(120)
def test_cmake_install_binary_and_manual_page(tmp_path):
    prefix = tmp_path / "x"
    r = subprocess.run(["cmake", "--install", str(build_dir()), "--prefix", str(prefix)],
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, f"cmake --install failed:\n{r.stdout}\n{r.stderr}"

    installed = prefix / "bin" / "tcpfault"
    v = subprocess.run([str(installed), "--version"], capture_output=True, text=True, timeout=10)
    assert v.returncode == 0 and v.stdout == run_tcpfault(["--version"]).stdout, v
    for rel in ("share/doc/tcpfault/README.md", "share/doc/tcpfault/docs/README.md",
                "share/doc/tcpfault/docs/faults.md",
                "share/doc/tcpfault/examples/recipes/ftp-upload-reset-700k.yaml"):
        assert (prefix / rel).is_file(), f"cmake --install did not install {rel}"

    page = prefix / "share" / "man" / "man1" / "tcpfault.1"
    assert page.is_file(), "no share/man/man1/tcpfault.1"
    man = shutil.which("man")
    assert man, "man is not installed (apt-get install man-db; docker/install-deps.sh test)"
    env = dict(os.environ, MANWIDTH="100", LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
    m = subprocess.run([man, "--warnings", "-l", str(page)], capture_output=True, text=True,
                       env=env, timeout=30)
    assert m.returncode == 0, f"man -l failed ({m.returncode}):\n{m.stderr}"
    assert not m.stderr.strip(), f"the manual page renders with warnings:\n{m.stderr}"
    out = m.stdout
    for word in ("NAME", "SYNOPSIS", "OPTIONS", "EXIT STATUS", "SEE ALSO",
                 v.stdout.strip(), f"{prefix}/share/doc/tcpfault/docs/"):
        assert word in out, f"the rendered manual page lacks {word!r}:\n{out}"
    missing = [f for f in cli_flags() if not mentions_flag(out, f)]
    assert not missing, f"the rendered manual page lacks the flags {missing}"
    assert "@" not in out, "an @VARIABLE@ of tcpfault.1.in was not filled in"


# ---------------------------------------------------------------------------------------------
# the README's build commands are CI's


def readme_build_commands() -> list[str]:
    body = section(README.read_text(), re.escape("Building by hand"))
    blocks = re.findall(r"```sh\n(.*?)```", body, re.S)
    assert blocks, "no ```sh block under '## Building by hand' in README.md"
    lines = [re.sub(r"\s+#.*$", "", line).strip() for b in blocks for line in b.splitlines()]
    cmds = [line for line in lines if line.startswith("cmake ")]
    assert len(cmds) >= 2, f"expected the build commands in README's block, found {cmds}"
    return cmds


def test_run_all_builds_with_the_readme_commands():
    run_all = (SOURCE_DIR / "tests" / "run-all.sh").read_text()
    code = [line.strip() for line in run_all.splitlines() if not line.strip().startswith("#")]
    readme = readme_build_commands()
    missing = [c for c in readme if c not in code]
    assert not missing, ("README's 'Building by hand' commands that tests/run-all.sh does not "
                         f"run verbatim: {missing}")
    extra = [c for c in code if c.startswith("cmake ") and c not in readme]
    assert not extra, f"tests/run-all.sh builds with commands the README does not show: {extra}"


@pytest.mark.timeout(180)
def test_readme_build_commands_configure_the_documented_builds(tmp_path):
    """Each README configure command, with its build directory under tmp: the plain build is
    optimized with debug info, the sanitizer build is an unoptimized ASan+UBSan build (a
    -O2 sanitizer build trips GCC 12's false -Wmaybe-uninitialized in <regex>)."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("needs cmake and ninja")
    configures = [part.strip() for c in readme_build_commands() for part in c.split("&&")
                  if part.strip().startswith("cmake -S")]
    assert len(configures) >= 2, configures
    for cmd in configures:
        args = shlex.split(cmd)
        args[args.index("-S") + 1] = str(SOURCE_DIR)
        b = args.index("-B") + 1
        build = tmp_path / args[b]
        args[b] = str(build)
        r = subprocess.run(args, capture_output=True, text=True, timeout=150)
        assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
        entries = json.loads((build / "compile_commands.json").read_text())
        flags = next(e["command"] for e in entries if e["file"].endswith("config/parse_rule.cpp"))
        if "-DTCPFAULT_SANITIZE=ON" in args:
            assert "-fsanitize=address,undefined" in flags and " -O2" not in flags, (cmd, flags)
        else:
            assert " -O2" in flags and " -g" in flags and "-fsanitize" not in flags, (cmd, flags)
