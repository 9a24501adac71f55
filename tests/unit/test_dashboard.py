"""deploy/grafana/genapi-dashboard.json queries only metrics that exist: every `genapi_*`
series it names is exported by the core (server/metrics.py) or the shim (shim/metrics.py)."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

from prometheus_client import REGISTRY

from server import metrics as core_metrics
from server.engines.base import EngineStats
from shim import metrics as shim_metrics

from ..conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "genapi-dashboard.json"


def exported_series() -> set[str]:
    # histograms and counters export their series only once a child exists: make one each
    for m in (core_metrics.TTFT, core_metrics.ITL, core_metrics.E2E, core_metrics.QUEUE, core_metrics.STEP,
              core_metrics.PROMPT_TOKENS, core_metrics.GENERATION_TOKENS):
        m.labels("m")
    core_metrics.SUCCESS.labels("m", "stop")
    core_metrics.REQUESTS.labels("Generate", "m", "k", "OK")
    core_metrics.RATE_LIMITED.labels("k", "requests")
    shim_metrics.HTTP_REQUESTS.labels("/v1/models", "GET", "", "k", "200")
    shim_metrics.HTTP_DURATION.labels("/v1/models")
    shim_metrics.HTTP_TTFT.labels("m")
    names = {s.name for fam in REGISTRY.collect() for s in fam.samples}
    engine = SimpleNamespace(stats=lambda: EngineStats(cache_slots_total=4))
    collector = core_metrics.EngineCollector(SimpleNamespace(models={"m": SimpleNamespace(engine=engine)}),
                                             SimpleNamespace(lines_waiting=0))
    return names | {s.name for fam in collector.collect() for s in fam.samples}


def test_dashboard_uses_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    used = {n for e in exprs for n in re.findall(r"genapi_[a-z0-9_]+", e)}
    assert len(used) >= 12
    missing = used - exported_series()
    assert not missing, missing
