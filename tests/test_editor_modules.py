"""The editor's JavaScript modules (serving/editor/static): their import contract, and how the gateway serves them.

The contract is the layer list at the top of main.js, the editor page's entry: a module imports only from its own
layer or a lower one, never in a cycle, and layer 1 imports nothing; every import names a module that exists and
names it exports; every export is imported somewhere; every module is in one layer and reachable from a page's
entry (main.js for the editor, models.js for the Models page). Modules run in the browser only when served as
JavaScript, so the gateway serves each with that type, and nothing outside the folder.
"""

import http.client
import re
import shutil
from pathlib import Path

import pytest

from serving.client import Client
from serving.editor.gateway import ASSETS, STATIC, EditorConfig, EditorServer
from serving.torchserve.config import free_port

ENTRY = "main.js"
IMPORT = re.compile(r'^import \{([^}]*)\} from "\./([\w-]+\.js)";', re.M)
ANY_IMPORT = re.compile(r"^\s*import\b|\bimport\s*\(|^\s*export\s*(\*|\{)", re.M)  # every import, and re-exports
EXPORT = re.compile(r"^export (?:async )?(?:function\*?|const|let|class) (\w+)", re.M)
LAYER = re.compile(r"^// layer (\d+) (\w+): (.+)$", re.M)


def scripts(folder: Path, module: bool) -> set[str]:
    """The scripts the folder's HTML pages load as modules (module=True: the pages' entries), or without
    type=module (the sign-in page's, not part of the module graph)."""
    found = set()
    for page in folder.glob("*.html"):
        for tag in re.findall(r"<script\b[^>]*>", page.read_text()):
            if ('type="module"' in tag) == module:
                found.add(re.search(r'src="/static/([^"]+)"', tag).group(1))
    return found


def problems(folder: Path) -> list[str]:
    """What breaks the contract in folder's modules, in words; empty when nothing does."""
    found: list[str] = []
    names = sorted(p.name for p in folder.glob("*.js") if p.name not in scripts(folder, module=False))
    sources = {n: (folder / n).read_text() for n in names}
    imports: dict[str, dict[str, set[str]]] = {}  # module -> imported module -> names
    exports = {n: set(EXPORT.findall(s)) for n, s in sources.items()}
    for n, source in sources.items():
        imports[n] = {}
        for names_list, target in IMPORT.findall(source):
            imports[n].setdefault(target, set()).update(x.strip() for x in names_list.split(",") if x.strip())
        if len(ANY_IMPORT.findall(source)) != len(IMPORT.findall(source)):
            found.append(f'{n}: an import or re-export not of the form import {{ a, b }} from "./name.js";')

    layers: dict[str, int] = {}
    for number, _, files in LAYER.findall(sources.get(ENTRY, "")):
        for f in files.split():
            if f in layers:
                found.append(f"{f} is in two layers of {ENTRY}'s list")
            layers[f] = int(number)
    for n in names:
        if n not in layers:
            found.append(f"{n} is in no layer of {ENTRY}'s list: add it to one")
    for f in layers:
        if f not in sources:
            found.append(f"{ENTRY}'s layer list names {f}, which is not in the folder")

    for n, targets in imports.items():
        for target, wanted in targets.items():
            if target not in sources:
                found.append(f"{n} imports ./{target}, which does not exist")
                continue
            for name in sorted(wanted - exports[target]):
                found.append(f"{n} imports {name} from ./{target}, which does not export it")
            if layers.get(n) == 1:
                found.append(f"{n} (layer 1) imports ./{target}: layer 1 imports nothing")
            elif layers.get(target, 0) > layers.get(n, 0):
                found.append(f"{n} (layer {layers.get(n)}) imports ./{target} of a higher layer ({layers[target]})")

    for n, names_out in exports.items():
        used = set().union(*(t.get(n, set()) for t in imports.values()))
        for name in sorted(names_out - used):
            found.append(f"{n} exports {name}, which no module imports")

    # cycles, and modules no page's entry reaches (depth-first from every module, the entries first)
    state: dict[str, str] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = "open"
        for target in sorted(imports.get(n, {})):
            if state.get(target) == "open":
                found.append("an import cycle: " + " -> ".join(path[path.index(target) :] + [target]))
            elif target in sources and target not in state:
                visit(target, [*path, target])
        state[n] = "done"

    for entry in sorted(scripts(folder, module=True) & set(sources)):
        visit(entry, [entry])
    for n in names:
        if n not in state:
            found.append(f"{n} is not reached from a page's entry: nothing imports it")
            visit(n, [n])
    return found


def test_the_page_loads_one_module_entry():
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == [f'<script type="module" src="/static/{ENTRY}">']
    assert scripts(STATIC, module=False) == {"signin.js"}  # the sign-in page's own script, with no imports
    assert not ANY_IMPORT.search((STATIC / "signin.js").read_text())


def test_the_modules_keep_their_layers_and_every_import_and_export_is_used():
    assert problems(STATIC) == []


@pytest.mark.parametrize(
    ("module", "line", "said"),
    [
        ("api.js", 'import { requestRender } from "./render.js";', "api.js (layer 1) imports ./render.js"),
        ("render.js", 'import { openNext } from "./claims.js";', "render.js (layer 2) imports ./claims.js of a higher"),
        ("queue.js", 'import { openNext } from "./claims.js";', "an import cycle: "),
        ("zoom.js", 'import { zoom } from "./brush.js";', "zoom.js imports zoom from ./brush.js, which does not"),
        ("zoom.js", 'import { x } from "./canvas.js";', "zoom.js imports ./canvas.js, which does not exist"),
        ("zoom.js", 'import * as brush from "./brush.js";', "zoom.js: an import or re-export not of the form"),
    ],
)
def test_the_contract_refuses_a_bad_import(tmp_path, module, line, said):
    """The check itself, on a copy of the folder with one bad import planted."""
    copy = tmp_path / "static"
    shutil.copytree(STATIC, copy)
    (copy / module).write_text(f"{line}\n" + (copy / module).read_text())
    assert any(said in p for p in problems(copy)), problems(copy)


def test_the_contract_refuses_an_unused_export_and_an_unlisted_module(tmp_path):
    copy = tmp_path / "static"
    shutil.copytree(STATIC, copy)
    (copy / "maps.js").write_text((copy / "maps.js").read_text() + "export const spare = 1;\n")
    (copy / "spare.js").write_text("export const nothing = 0;\n")
    found = problems(copy)
    assert "maps.js exports spare, which no module imports" in found
    assert "spare.js is in no layer of main.js's list: add it to one" in found
    assert "spare.js is not reached from a page's entry: nothing imports it" in found


@pytest.fixture(scope="module")
def gateway():
    down = f"127.0.0.1:{free_port()}"  # no service is needed to serve the page's files
    with Client(down, key_file="absent-key-file.json", feedback_target=down) as client:
        server = EditorServer(EditorConfig(address="127.0.0.1:0", feedback=down), client)
        yield server
        server.stop()


def get(server: EditorServer, path: str) -> tuple[int, str, bytes]:
    """GET path as written (http.client sends it without resolving . or ..)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type", ""), answer.read()
    finally:
        connection.close()


def test_every_script_and_style_of_the_folder_is_served_with_its_type(gateway):
    on_disk = {p.name for p in STATIC.iterdir() if p.suffix in (".js", ".css")}
    assert set(ASSETS) == on_disk and ENTRY in on_disk
    for name in sorted(on_disk):
        status, media, body = get(gateway, f"/static/{name}")
        want = "text/javascript" if name.endswith(".js") else "text/css"
        assert (status, media.split(";")[0]) == (200, want), name
        assert body == (STATIC / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.html",  # in the folder, but not a script or a style
        "/static/gateway.py",
        "/static/..",
        "/static/%2e%2e",
        "/static/../gateway.py",
        "/static/..%2Fgateway.py",
        "/static/%2e%2e%2f__init__.py",
        "/static/",
    ],
)
def test_nothing_else_is_served_from_static(gateway, path):
    status, _, body = get(gateway, path)
    assert status == 404 and b"import" not in body and b"<html" not in body
