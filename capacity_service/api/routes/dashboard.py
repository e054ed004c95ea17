"""/dashboard: the web page and its static files. plotly.js comes from the plotly Python
package installed beside the app, so the page needs no network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from capacity_service.api.problems import NOT_FOUND, ProblemError

router = APIRouter(include_in_schema=False)
PAGE = Path(__file__).resolve().parents[2] / "dashboard"
CACHE = {"Cache-Control": "public, max-age=86400"}


def plotly_js() -> Path | None:
    """plotly.min.js of the installed plotly package (found without importing it)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@router.get("/dashboard")
def dashboard() -> FileResponse:
    return FileResponse(PAGE / "index.html", media_type="text/html")


@router.get("/dashboard/static/{name}")
def static(name: str) -> FileResponse:
    if name == "plotly.min.js" and (path := plotly_js()) is not None:
        return FileResponse(path, media_type="text/javascript", headers=CACHE)
    if name in ("app.js", "style.css"):
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(PAGE / name, media_type=kind)
    missing = "plotly is not installed (pip install plotly)" if name == "plotly.min.js" else ""
    raise ProblemError(404, "Not found", missing or f"no dashboard file {name}", type=NOT_FOUND)
