"""What the rules and the dashboards share: the configuration (mixin/config.yaml, merged with the
files given by --config) and the few helpers that turn it into PromQL and alert texts."""
import copy
import pathlib

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def merge(base, extra):
    """`extra` over `base`, maps merged key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(extra_files=()):
    cfg = yaml.safe_load((HERE / "config.yaml").read_text())
    for f in extra_files:
        cfg = merge(cfg, yaml.safe_load(pathlib.Path(f).read_text()) or {})
    return Config(cfg)


class Config:
    def __init__(self, raw):
        self.raw = raw
        self.sidecar = raw["selectors"]["sidecar"]
        self.runner = raw["selectors"]["runner"]
        cluster = [raw["cluster_label"]] if raw.get("cluster_label") else []
        # One pod: where a sidecar and a runner meet.
        self.pod_labels = cluster + list(raw["pod_labels"])
        # One target: what every aggregation keeps.
        self.group_labels = self.pod_labels + list(raw["extra_group_labels"])
        self.runbook = raw["runbook_url"]
        self.dashboards = raw["dashboards"]

    def alert(self, name):
        try:
            return self.raw["alerts"][name]
        except KeyError:
            raise SystemExit(f"mixin/config.yaml: no `alerts.{name}` entry") from None

    def by(self, *more):
        """`by (cluster, namespace, pod, node, instance, MORE…)`."""
        return "by (" + ", ".join(self.group_labels + list(more)) + ")"

    def by_pod(self):
        return "by (" + ", ".join(self.pod_labels) + ")"

    def level(self):
        """The `level` of recorded names (monitoring-mixin naming: level:metric:operations)."""
        return "_".join(self.pod_labels)


def sel(selector, extra=""):
    """`{job="leakwarden", extra}`."""
    inner = ", ".join(s for s in (selector, extra) if s)
    return "{" + inner + "}"


# Where an alert is, in words: the pod (and its node) in Kubernetes, the node or the target
# elsewhere — never a pod IP. A template of label lookups that tolerates missing labels.
WHERE = (
    "{{ with $labels.pod }}pod {{ $labels.namespace }}/{{ . }}"
    "{{ with $labels.node }} on node {{ . }}{{ end }}"
    "{{ else }}{{ with $labels.node }}node {{ . }}{{ else }}{{ $labels.instance }}{{ end }}{{ end }}"
    "{{ with $labels.cluster }} (cluster {{ . }}){{ end }}"
)


def where(cfg):
    """WHERE with the configured cluster label (or without one)."""
    c = cfg.raw.get("cluster_label")
    if not c:
        return WHERE.replace("{{ with $labels.cluster }} (cluster {{ . }}){{ end }}", "")
    return WHERE.replace("$labels.cluster", f"$labels.{c}")


def words(d):
    """A `for:` duration in words: 5m → "5 minutes", 1h → "1 hour" (single-unit durations)."""
    names = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}
    n, u = int(d[:-1]), d[-1]
    return f"{n} {names[u]}{'' if n == 1 else 's'}"


def words_seconds(s):
    """Seconds in words, in the largest unit that divides them: 3600 → "1 hour"."""
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if s % n == 0:
            k = int(s // n)
            return f"{k} {unit}{'' if k == 1 else 's'}"
    return f"{s} seconds"


def duration_seconds(d):
    """Seconds in a Prometheus duration such as 5m, 1h30m, 1d."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total, num, i = 0.0, "", 0
    while i < len(d):
        c = d[i]
        if c.isdigit():
            num += c
            i += 1
            continue
        unit = d[i:i + 2] if d[i:i + 2] == "ms" else c
        total += int(num) * units[unit]
        num, i = "", i + len(unit)
    return total
