"""The browser client as a page gets it: ``/client.js`` and every module it imports,
fetched from a worker the way a browser resolves them (relative to the importing
module's URL), and saved with the same layout (so Node runs the copy as it is)."""

from __future__ import annotations

import posixpath
import re
import urllib.request
from pathlib import Path

# A static import or re-export of a relative specifier: `import ... from "./x.js"`,
# `export { ... } from "../y.js"` (over several lines). Type-only `import("...")` in
# JSDoc comments is no import: a browser fetches nothing for it.
RELATIVE_IMPORT = re.compile(r'^(?:import|export)\b[^;]*?\bfrom\s+"(\.\.?/[^"]+)"', re.MULTILINE)


def relative_imports(source: str) -> list[str]:
    """The relative specifiers a module imports, in order."""
    return RELATIVE_IMPORT.findall(source)


def download_client(base_url: str, into: Path) -> dict[str, bytes]:
    """Fetches ``/client.js`` and, transitively, the modules it imports from the worker
    at ``base_url``, and saves each under ``into`` at its path; the bodies, by path
    (``client.js``, ``client/errors.js``, ...). A module the worker does not serve
    raises ``urllib.error.HTTPError``, as it fails a browser's import."""
    fetched: dict[str, bytes] = {}
    wanted = ["client.js"]
    while wanted:
        path = wanted.pop()
        if path in fetched:
            continue
        assert not path.startswith("../"), f"an import leaves the worker's root: {path}"
        with urllib.request.urlopen(f"{base_url}/{path}") as response:
            body = response.read()
        fetched[path] = body
        (into / path).parent.mkdir(parents=True, exist_ok=True)
        (into / path).write_bytes(body)
        for specifier in relative_imports(body.decode()):
            wanted.append(posixpath.normpath(posixpath.join(posixpath.dirname(path), specifier)))
    return fetched
