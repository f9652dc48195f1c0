"""The JSON document of a run (rewritten atomically after every row), its markdown and PNG, and
merging the documents of separate runs (``throughput.py --merge``)."""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from .common import SCHEMA, short_error
from .sections import SECTIONS


def targets(doc: dict) -> list[dict]:
    return [t for s in SECTIONS for t in s.targets(doc)]


def _header(m: dict) -> list[str]:
    gpu = m.get("gpu")
    lines = [f"# clip4clip-dali benchmark: {m['name']}", "",
             f"- date: {m['created']}; device: {m['device']}; CPU: {m['cpu']['model']} "
             f"({m['cpu']['cores']} usable cores); GPU: {gpu['name'] if gpu else 'none'}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
             f"- command: `{m['command']}`"]
    start, end = m.get("load_average_at_start"), m.get("load_average_at_end")
    if start:
        la = lambda v: "/".join(f"{x:.1f}" for x in v)  # noqa: E731
        busy = max(start[:1] + (end or [0])[:1]) > m["cpu"]["cores"]
        lines.append(f"- load average (1/5/15 min) at start {la(start)}"
                     + (f", at end {la(end)}" if end else "") + f" on {m['cpu']['cores']} cores"
                     + (" (above the core count: other processes shared the machine and the "
                        "timings are noisy)" if busy else ""))
    if m.get("omp_wait_policy"):
        lines.append(f"- OMP_WAIT_POLICY={m['omp_wait_policy']} for every row (set by the benchmark "
                     f"unless given)")
    return lines + [""]


def to_markdown(doc: dict) -> str:
    lines = _header(doc["meta"])
    for s in SECTIONS:
        lines += s.markdown(doc)
    if doc.get("targets"):
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in doc["targets"]:
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(f"| {t['target']} | {t['measured']}{note} | {t['met']} |")
        lines.append("")
    if doc.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in doc["errors"]] + [""]
    return "\n".join(lines)


def write_png(doc: dict, path: Path) -> str | None:
    """Bar charts, one panel per section with rows (median, p10-p90 error bars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"no PNG: matplotlib not installed ({type(e).__name__})"
    panels = [p for p in (s.plot(doc) for s in SECTIONS) if p]
    if not panels:
        return "no PNG: nothing measured"
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.5), squeeze=False)
    for ax, (rows, key, labels, colour, rotation, ylabel, title) in zip(axes[0], panels):
        med = [r[key]["median"] for r in rows]
        err = [[m - r[key]["p10"] for m, r in zip(med, rows)],
               [r[key]["p90"] - m for m, r in zip(med, rows)]]
        ax.bar(range(len(rows)), med, yerr=err, capsize=3, color=colour)
        ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=rotation, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    fig.suptitle(doc["meta"]["name"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


class Report:
    """The JSON document, rewritten (atomically) after every row."""

    def __init__(self, out_dir: Path, name: str, meta: dict):
        self.out_dir, self.name = out_dir, name
        out_dir.mkdir(parents=True, exist_ok=True)
        self.doc = {"schema": SCHEMA, "meta": meta, "errors": []}
        self.flush()

    def path(self, ext: str) -> Path:
        return self.out_dir / f"{self.name}.{ext}"

    def flush(self, final: bool = False) -> None:
        self.doc["targets"] = targets(self.doc)
        self.doc["meta"]["complete"] = final
        for ext, text in (("json", json.dumps(self.doc, indent=1, default=str)),
                          ("md", to_markdown(self.doc))):
            tmp = self.path(ext + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path(ext))

    def error(self, where: str, e: BaseException) -> None:
        traceback.print_exc()
        self.doc["errors"].append(f"{where}: {short_error(e)}")
        self.flush()

    def finish(self) -> str | None:
        """PNG, final flush; returns why there is no PNG, or None."""
        png_err = write_png(self.doc, self.path("png"))
        if png_err:
            self.doc["meta"]["png"] = png_err
        self.flush(final=True)
        return png_err


def merge(paths: list[str], out: Path, name: str) -> int:
    """Merge the JSON reports of separate runs (gpu_all.sh, gpu_suite.sh) into one report."""
    docs, errors = [], []
    for p in paths:
        try:
            docs.append(json.loads(Path(p).read_text()))
        except Exception as e:
            errors.append(f"{p}: not merged ({short_error(e)}); that run did not finish or start")
    if not docs:
        print("error: nothing to merge", file=sys.stderr)
        return 2
    meta = dict(docs[0]["meta"], name=name, merged_from=[str(p) for p in paths],
                command=" ; ".join(d["meta"]["command"] for d in docs))
    rep = Report(out, name, meta)
    rep.doc["errors"] = errors + [e for d in docs for e in d.get("errors", [])]
    for d in docs:
        if not d["meta"].get("complete"):
            rep.doc["errors"].append(f"{d['meta']['name']}: run cut short (partial results)")
        for s in SECTIONS:
            if s.NAME in d:
                s.merge(rep.doc, d[s.NAME])
    rep.doc["meta"]["seconds"] = round(sum(d["meta"].get("seconds", 0) for d in docs), 1)
    rep.finish()
    print(rep.path("md").read_text())
    return 0
