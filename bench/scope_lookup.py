"""What deciding a predict request's scope, rate class and serving route costs per request,
in process (no HTTP): the route table (app.api.route_access, remembered per method and path,
and a path seen for the first time) and the serving route's arguments
(app.api.serving_route.FoundServingRoute), against the suffix rules and regexes they replaced,
kept here verbatim as the baseline and measured in the same run. The new figures include the
control-character check the baseline did not make.

Usage: python bench/scope_lookup.py [--number 50000]
"""

from __future__ import annotations

import argparse
import itertools
import re
import timeit
from typing import Any

from app.api.deps import CALLER_STATE, OPEN_CALLER
from app.api.route_access import CONTROL, FOUND_STATE, route_table
from app.main import create_app
from app.predict.service import Ref

# --- the baseline: how the scope was decided before (from how the path ends) ----------------
_PREDICT_SUFFIXES = (":predict", ":classify", ":regress", "/infer")
_OLD_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,10})|"
                          r"/labels/(?P<label>[^/:]+))?:predict$")
_OLD_INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[0-9]{1,10}))?"
                        r"/infer$")
_OLD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _old(method: str, path: str) -> Any:
    scopes = ({"admin"} if path.startswith(("/v1/keys", "/v1/audit", "/v1/tenants", "/metrics"))
              else {"predict"} if path.endswith(_PREDICT_SUFFIXES) else {"write"})
    rate = "predict" if path.endswith(_PREDICT_SUFFIXES) else "write"
    match = _OLD_PREDICT.match(path) if path.endswith(":predict") else _OLD_INFER.match(path)
    if match is None or not _OLD_NAME.match(match["name"]):
        return scopes, rate, None
    version = match["version"]
    return scopes, rate, Ref("", match["name"], version=int(version) if version else None,
                             label=match["label"] if match.re is _OLD_PREDICT else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=50_000)
    n = parser.parse_args().number
    app = create_app()
    table = route_table(app)
    serving_route = app.routes[0]  # FoundServingRoute
    path = "/v1/models/seed-linear:predict"

    def new() -> None:
        scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path,
                                 "root_path": "", "app": app, "state": {CALLER_STATE: OPEN_CALLER}}
        CONTROL.search(path)
        scope[FOUND_STATE] = table.find(scope)
        serving_route.matches(scope)

    counter = itertools.count()

    def first_seen() -> None:
        p = f"/v1/models/m{next(counter)}:predict"
        scope: dict[str, Any] = {"type": "http", "method": "POST", "path": p, "root_path": "",
                                 "app": app, "state": {CALLER_STATE: OPEN_CALLER}}
        CONTROL.search(p)
        scope[FOUND_STATE] = table.find(scope)
        serving_route.matches(scope)

    def old() -> None:
        scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path,
                                 "root_path": "", "app": app}
        _old(scope["method"], scope["path"])

    def best(fn: Any, number: int) -> float:
        """µs per call: the fastest of 7 rounds (the others measured the machine's load)."""
        return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6

    baseline = best(old, n)
    remembered = best(new, n)
    fresh = best(first_seen, n // 10)
    print("| per predict request | µs | ratio to baseline |\n|---|---|---|")
    print(f"| baseline: suffix rules + fast-path regex (replaced) | {baseline:.2f} | 1.00 |")
    print(f"| route table, path seen before | {remembered:.2f} | {remembered / baseline:.2f} |")
    print(f"| route table, path seen first | {fresh:.2f} | {fresh / baseline:.2f} |")


if __name__ == "__main__":
    main()
