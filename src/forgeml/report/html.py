"""The report as one self-contained HTML page: inline CSS, pictures as PNG data URIs, no script and
no reference to anything outside the file, so it opens the same offline, attached to an e-mail or
in a review tool."""

from __future__ import annotations

import base64
import html
import json
from typing import Any, Iterable, Optional

SECTIONS = (
    ("summary", "Summary"),
    ("data", "Data"),
    ("training", "Training"),
    ("evaluation", "Evaluation"),
    ("calibration", "Calibration"),
    ("explanations", "Explanations"),
    ("robustness", "Robustness"),
    ("privacy", "Privacy"),
    ("export", "Export"),
    ("environment", "Environment"),
)

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","PingFang SC","Microsoft YaHei",sans-serif;
color:#1f2328;background:#f6f8fa;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px}
header h1{font-size:22px;margin:0 0 4px}
header p{margin:0;color:#59636e}
nav{margin:12px 0 0;display:flex;flex-wrap:wrap;gap:6px}
nav a{color:#0969da;text-decoration:none;padding:2px 8px;border:1px solid #d1d9e0;border-radius:12px;background:#fff;font-size:12px}
section{background:#fff;border:1px solid #d1d9e0;border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:17px;margin:0 0 12px}
h3{font-size:14px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid #e6eaef;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.card{border:1px solid #d1d9e0;border-radius:8px;padding:10px 12px;background:#fbfcfd}
.card .label{font-size:11px;color:#59636e;text-transform:uppercase;letter-spacing:.03em}
.card .value{font-size:20px;font-weight:600;margin-top:2px}
.card .detail{font-size:11px;color:#59636e}
.note{color:#59636e;font-style:italic}
.note code{font-style:normal}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f6f8fa;border:1px solid #e6eaef;border-radius:6px;padding:10px;overflow:auto;max-height:420px}
img{max-width:100%;height:auto}
.mistakes{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}
.mistake{border:1px solid #e6eaef;border-radius:6px;padding:8px;font-size:12px}
.mistake img{image-rendering:pixelated;width:84px;display:block;margin-bottom:4px}
blockquote{margin:4px 0;padding:4px 8px;border-left:3px solid #d1d9e0;color:#33393f}
.bad{color:#cf222e;font-weight:600}.good{color:#1a7f37;font-weight:600}
"""


def render(report: dict[str, Any]) -> str:
    """The HTML page of a report collected by ``forgeml.report.collect``."""
    pictures: dict[str, bytes] = report.get("pictures", {})
    summary = report["summary"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>forgeml report: {_e(report['run'])}</title>",
        f"<style>{STYLE}</style></head><body><main>",
        "<header>",
        f"<h1>forgeml report: {_e(report['run'])}</h1>",
        f"<p>{_e(summary['model'])} {_e(summary['task'])} model; generated {_e(report['generated'])}</p>",
        "<nav>" + "".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS) + "</nav>",
        "</header>",
    ]
    for key, title in SECTIONS:
        body = SECTION_RENDERERS[key](report, pictures) if report.get(key) is not None else _absent(report, key)
        parts.append(f'<section id="{key}"><h2>{title}</h2>{body}</section>')
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------
# pieces


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return _e(value)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_number(c)}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool) else f"<td>{_number(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(pictures: dict[str, bytes], key: Optional[str], alt: str, width: Optional[int] = None) -> str:
    if not key or key not in pictures:
        return ""
    data = base64.b64encode(pictures[key]).decode("ascii")
    style = f' style="max-width:{width}px"' if width else ""
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}"{style}>'


def _card(label: str, value: str, detail: str = "") -> str:
    return f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{value}</div><div class="detail">{_e(detail)}</div></div>'


def _absent(report: dict[str, Any], key: str) -> str:
    if key in report.get("missing", {}):
        return f'<p class="note">Not run yet: <code>{_e(report["missing"][key])}</code></p>'
    if key in report.get("not_applicable", []):
        return f'<p class="note">Does not apply to a {_e(report["summary"]["task"].replace("_", " "))} model.</p>'
    return '<p class="note">Nothing recorded in the run.</p>'


# --------------------------------------------------------------------------------------------------
# sections


def _summary(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    summary = report["summary"]
    cards = [
        _card("task", _e(summary["task"].replace("_", " "))),
        _card("model", _e(summary["model"]), f"{summary['parameters']:,} parameters"),
        _card("compute", _number(summary["macs"]) if summary["macs"] is not None else "–", "multiply-accumulates per example"),
        _card("data", _number(sum(summary["rows"].values())) if summary["rows"] else "–", " / ".join(f"{k} {v:,}" for k, v in summary["rows"].items())),
    ]
    headline = summary.get("headline")
    if headline:
        cards.append(_card(f"test {headline['metric']}", _number(headline["value"])))
    trust = summary["trust"]
    if "ece_calibrated" in trust:
        cards.append(_card("calibration ECE", _number(trust["ece_calibrated"]), f"{trust['ece_uncalibrated']:.4f} before temperature scaling"))
    if "robust_accuracy" in trust:
        robust = trust["robust_accuracy"]
        cards.append(_card("robust accuracy", _number(robust["value"]), f"{robust['attack']} at eps {robust['eps']}"))
    if "epsilon" in trust:
        cards.append(_card("differential privacy", f"ε {trust['epsilon']:.2f}", f"δ {trust['delta']:g}"))
    if "membership_auc" in trust:
        cards.append(_card("membership attack AUC", _number(trust["membership_auc"]), "0.5 is chance"))
    if "faithful_methods" in trust:
        cards.append(_card("faithful explanations", _e(trust["faithful_methods"]), "methods better than random"))
    if "export_max_abs_diff" in trust:
        cards.append(_card("ONNX parity", _number(trust["export_max_abs_diff"]), "max |logit difference|"))
    missing = report.get("missing", {})
    note = f'<p class="note">Not run yet: {", ".join(_e(k) for k in missing)} (see their sections).</p>' if missing else ""
    return f'<div class="cards">{"".join(cards)}</div>{note}'


def _data(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    data = report["data"]
    source = ", ".join(f"{k}: {v}" for k, v in data["source"].items() if v is not None)
    parts = [f"<p>Source: <code>{_e(source)}</code>; model input: <code>{_e(data['model_input'].get('kind'))} {_e(data['model_input'].get('shape', ''))}</code>."]
    skipped = data.get("skipped_rows") or 0
    skipped = sum(skipped.values()) if isinstance(skipped, dict) else int(skipped)
    if skipped:
        parts.append(f" Rows skipped as unreadable: {skipped:,}.")
    parts.append("</p>")
    if data["rows"]:
        parts.append(_table(["split", "rows"], data["rows"].items()))
    balance = data.get("class_balance")
    if balance:
        names = list(next(iter(balance.values())))
        splits = list(balance)
        rows = [[name, *(f"{balance[s][name]:,} ({balance[s][name] / max(sum(balance[s].values()), 1):.0%})" for s in splits)] for name in names[:50]]
        parts.append("<h3>Class balance</h3>" + _table(["class", *splits], rows))
    features = data.get("preprocessing") or []
    rows = [[f.get("column"), f.get("type"), ", ".join(f"{k}={v}" for k, v in {**f.get("config", {}), **f.get("fitted", {})}.items() if v is not None)] for f in features]
    if data.get("target"):
        target = data["target"]
        rows.append([f"{target.get('column')} (target)", target.get("type"), ", ".join(f"{k}={v}" for k, v in target.get("fitted", {}).items())])
    parts.append("<h3>Preprocessing (fitted on the training split)</h3>" + _table(["column", "type", "settings and fitted state"], rows))
    return "".join(parts)


def _training(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    t = report["training"]
    stopped = "yes, early stopping" if t.get("stopped_early") else "no"
    rows = [
        ["steps", t.get("steps")],
        ["epochs", t.get("epochs")],
        ["examples seen", t.get("examples")],
        ["training time (s)", t.get("seconds")],
        ["device", f"{t.get('device')} × {t.get('processes') or 1} process(es)"],
        ["optimizer", f"{t['optimizer']}, lr {t['lr']}, {t['schedule']} schedule, batch {t['batch_size']}"],
        [f"best step (validation {t.get('monitor')})", f"{t.get('best_step')} ({_number(t.get('best_value'))})" if t.get("best_step") is not None else "–"],
        ["stopped before the last epoch", stopped],
    ]
    return _table(["", ""], rows) + _img(pictures, "curves", "training curves: loss, validation metric and learning rate by step")


def _evaluation(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    e = report["evaluation"]
    parts = [f"<p>Test split ({_e(e.get('source'))}{', ' + format(e['rows'], ',') + ' examples' if e.get('rows') else ''}).</p>"]
    parts.append(_table(["metric", "value"], [[k, v] for k, v in e["metrics"].items()]))
    if "confusion" in pictures:
        parts.append("<h3>Confusion matrix</h3>" + _img(pictures, "confusion", "confusion matrix heat map", 560))
        parts.append("<h3>Per class</h3>" + _img(pictures, "per_class", "precision and recall per class", 640))
        per_class = e.get("per_class") or {}
        parts.append(_table(["class", "precision", "recall", "F1", "support"], [[n, s["precision"], s["recall"], s["f1"], s["support"]] for n, s in per_class.items()]))
    mistakes = e.get("mistakes")
    if mistakes is not None:
        title = "Most confident mistakes" if report["summary"]["task"] == "classification" else "Largest errors"
        if not mistakes:
            parts.append(f"<h3>{title}</h3><p>None: every test example is predicted right.</p>")
        else:
            cells = []
            for m in mistakes:
                if "probability" in m:
                    head = f"true <b>{_e(m['true'])}</b>, predicted <b class=\"bad\">{_e(m['predicted'])}</b> (p {m['probability']:.3f})"
                else:
                    head = f"true {_number(m['true'])}, predicted {_number(m['predicted'])} (error {_number(m['error'])})"
                body = _img(pictures, m.get("picture"), f"test input at {m['where']}")
                if "text" in m:
                    body += f"<blockquote>{_e(m['text'])}</blockquote>"
                if "values" in m:
                    body += "<div>" + ", ".join(f"{_e(k)}={_e(v)}" for k, v in m["values"].items()) + "</div>"
                cells.append(f'<div class="mistake">{body}<div>{head}</div><div class="note">{_e(m["where"])}</div></div>')
            parts.append(f"<h3>{title}</h3><div class=\"mistakes\">{''.join(cells)}</div>")
    return "".join(parts)


def _calibration(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    c = report["calibration"]
    stale = "" if c.get("current") else '<p class="bad">Fitted to earlier weights: run forgeml calibrate again (the Predictor does not apply it).</p>'
    rows = [[split, c["before"][split]["ece"], c["after"][split]["ece"], c["before"][split]["nll"], c["after"][split]["nll"], c["before"][split]["accuracy"]] for split in c["before"]]
    text = f"<p>Temperature <b>{c['temperature']:.4f}</b>, fitted on {c['rows']:,} {_e(c['fitted_on'])} examples; {c['bins']} confidence bins. Predictions divide logits by it; classes do not change.</p>"
    table = _table(["split", "ECE before", "ECE after", "NLL before", "NLL after", "accuracy"], rows)
    return stale + text + table + "".join(_img(pictures, key, "reliability diagrams before and after temperature scaling") for key in c.get("pictures", []))


def _explanations(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    x = report["explanations"]
    parts = []
    f = x.get("faithfulness")
    if f:
        rows = [[c["method"], c["auc"], c["random_auc"], c["improvement"], 2 * c["standard_error"], "better than random" if c["better_than_random"] else "NOT better than random"] for c in f["curves"]]
        parts.append(f"<h3>Faithfulness: deletion curves on {f['rows']} {_e(f['split'])} examples</h3>")
        parts.append("<p>Removing the most-attributed features first should make the prediction fall faster than removing them at random (a smaller area is more faithful).</p>")
        parts.append(_table(["method", "area", "random", "gain", "± 2 s.e.", "verdict"], rows))
        parts.extend(_img(pictures, key, "deletion curves") for key in f.get("pictures", []))
    for method, entry in x["methods"].items():
        parts.append(f"<h3>{_e(method)} ({_e(entry.get('kind'))})</h3>")
        for item in entry["inputs"]:
            top = ", ".join(f"{_e(name)} {score:+.3g}" for name, score in item.get("top", []))
            parts.append(f"<p><code>{_e(item['input'])}</code>: {_e(item['target'])} (p {item['probability']:.3f}); strongest: {top}</p>")
            parts.extend(_img(pictures, key, f"{method} attribution of {item['input']}") for key in item.get("pictures", []))
    return "".join(parts) or '<p class="note">explain.json holds no results.</p>'


def _robustness(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    parts = []
    for name, a in report["robustness"]["attacks"].items():
        label = "FGSM" if a["method"] == "fgsm" else f"PGD-{a.get('steps')}"
        parts.append(f"<h3>{label} ({_e(a['norm'])}) on {a['rows']:,} {_e(a['split'])} examples</h3>")
        parts.append(f"<p>Perturbed in {_e(a.get('space'))}; clean accuracy {_number(a.get('clean_accuracy'))}.</p>")
        parts.append(_table(["eps", "robust accuracy", "largest perturbation"], [[p["eps"], p["robust_accuracy"], p.get("max_perturbation")] for p in a["points"]]))
        parts.extend(_img(pictures, key, f"{name} robustness curve") for key in a.get("pictures", []))
    return "".join(parts)


def _privacy(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    p = report["privacy"]
    parts = []
    dp = p.get("differential_privacy")
    if dp:
        parts.append("<h3>Differential privacy (DP-SGD)</h3>")
        parts.append(_table(["ε", "δ", "noise multiplier", "sample rate", "max grad norm", "steps", "accountant"], [[dp["epsilon"], dp["delta"], dp["noise_multiplier"], dp["sample_rate"], dp["max_grad_norm"], dp["steps"], dp.get("accountant")]]))
    else:
        parts.append('<p class="note">Trained without differential privacy (set <code>train.privacy</code> to train with DP-SGD).</p>')
    m = p.get("membership")
    if m:
        parts.append(f"<h3>Membership inference (loss threshold), {m['members']:,} training against {m['non_members']:,} {_e(m['held_out'])} examples</h3>")
        parts.append(_table(["AUC", "advantage", "mean loss, training", f"mean loss, {m['held_out']}"], [[m["auc"], m["advantage"], m["member_loss"], m["non_member_loss"]]]))
        parts.extend(_img(pictures, key, "membership inference ROC and loss distributions") for key in m.get("pictures", []))
    else:
        parts.append(f'<p class="note">Membership audit not run yet: <code>{_e("forgeml audit " + report["run"])}</code></p>')
    return "".join(parts)


def _export(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    x = report["export"]
    parts = [f"<p>Bundle <code>{_e(x.get('bundle'))}</code> ({_e(x.get('format', 'onnx'))}, opset {_e(x.get('opset'))}); int8 mode: {_e(x.get('mode') or '–')}.</p>"]
    rows = [
        [r.get("name"), r.get("max_abs_diff"), f"{r.get('metric_name')} {_number(r.get('metric'))}", r.get("size_bytes"), r.get("p50_b1_ms"), r.get("p95_b1_ms"), r.get("p50_b32_ms"), r.get("p95_b32_ms")]
        for r in x.get("rows", [])
    ]
    parts.append(_table(["runtime", "max |diff|", "metric", "size (bytes)", "p50 b1 (ms)", "p95 b1 (ms)", "p50 b32 (ms)", "p95 b32 (ms)"], rows))
    return "".join(parts)


def _environment(report: dict[str, Any], pictures: dict[str, bytes]) -> str:
    env = report["environment"]
    rows = [[k, v] for k, v in env["versions"].items()]
    rows += [["device (training)", env.get("device")], ["platform", env.get("platform")], ["GPU", env.get("cuda") or "none"]]
    rows += [["manifest.json sha256", env["manifest_sha256"]], ["model.safetensors sha256", env.get("model_sha256")]]
    command = " ".join(env.get("command") or [])
    return (
        _table(["", ""], rows)
        + (f"<p>Trained with: <code>{_e(command)}</code></p>" if command else "")
        + "<h3>Resolved config (config.yaml)</h3>"
        + f"<pre>{_e(env['config'])}</pre>"
        + f"<details><summary>Trained on</summary><pre>{_e(json.dumps(env.get('trained_with'), indent=2))}</pre></details>"
    )


SECTION_RENDERERS = {
    "summary": _summary,
    "data": _data,
    "training": _training,
    "evaluation": _evaluation,
    "calibration": _calibration,
    "explanations": _explanations,
    "robustness": _robustness,
    "privacy": _privacy,
    "export": _export,
    "environment": _environment,
}
