"""Answers kept in tables instead of fetched: a notebook widget's state and messages, a static
export's data files. One key per (endpoint, parameters), the same that data.js's answerKey makes,
and float arrays packed as base64 little-endian float32 (data.js's unpack reads them back into
the very lists the HTTP API sends)."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import numpy as np

from lens_pipeline.viewer.api import Api
from lens_pipeline.viewer.caches import Floats
from lens_pipeline.viewer.params import ApiError


def clean(params: dict[str, Any]) -> dict[str, str]:
    """What a request carries: empty parameters left out, every value as text (data.js's clean)."""
    return {key: str(value) for key, value in params.items() if value is not None and value != ""}


def answer_key(path: str, params: dict[str, Any]) -> str:
    """'["pattern",[["head","6"],["layer","18"],...]]': the endpoint and its sorted parameters."""
    return json.dumps([path, sorted([key, value] for key, value in clean(params).items())], separators=(",", ":"),
                      ensure_ascii=False)


def pack(value: Any) -> Any:
    """The answer with each float array (viewer.caches.Floats) as {"f32": base64, "shape": [...]}."""
    if isinstance(value, Floats):
        array = np.ascontiguousarray(value.array, dtype="<f4")
        return {"f32": base64.b64encode(array.tobytes()).decode("ascii"), "shape": list(array.shape)}
    if isinstance(value, dict):
        return {key: pack(item) for key, item in value.items()}
    if isinstance(value, list):
        return [pack(item) for item in value]
    return value


def ask(api: Api, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """What a table keeps for GET /api/PATH?PARAMS: {"body": packed answer} or {"error", "status"}."""
    try:
        return {"body": pack(api.handle(f"/api/{path}", urlencode(clean(params))))}
    except ApiError as error:
        return {"error": error.message, "status": error.status}


def script_json(value: Any) -> str:
    """JSON to put inside an HTML <script> element: no '<' (so no '</script>' or '<!--') ends it early."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
