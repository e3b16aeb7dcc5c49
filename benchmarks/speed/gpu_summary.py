"""summary.md of the GPU check: the environment, each step's status, and the measured rows."""

from __future__ import annotations


def summary_markdown(report: dict) -> str:
    """Markdown for `gpu_check.json`'s report (works on a partial report: missing parts are left out)."""
    results = report.get("results", {})
    lines = ["# GPU check", "", f"Started {report.get('started', '?')}, {report.get('elapsed_s', 0):.0f} s of "
             f"{report.get('budget_s', 0):.0f} s budget.", ""]
    lines += _environment(results.get("environment"))
    lines += [f"**Note.** {note}" for note in report.get("notes", [])] + ([""] if report.get("notes") else [])
    lines += ["## Steps", "", "| step | status | s |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s.get('seconds', '')} |" for s in report.get("steps", [])]
    lines += ["", *_bench_table(results), *_end_to_end(results), *_targets(results)]
    return "\n".join(lines) + "\n"


def _environment(env: dict | None) -> list[str]:
    if not env:
        return []
    v, cuda = env.get("versions", {}), env.get("cuda", {})
    gpu = f"{cuda.get('name', 'no GPU')} ({cuda.get('memory_gib', 0):.0f} GiB, driver {cuda.get('driver', '?')}, " \
          f"CUDA {cuda.get('cuda', '?')})" if cuda else "no GPU (dry run)"
    return [f"**Environment.** {gpu}; torch {v.get('torch')}, diffusers {v.get('diffusers')}, python "
            f"{v.get('python')}; allocator {env.get('allocator', {}).get('mode', '?')}.", ""]


def _bench_table(results: dict) -> list[str]:
    rows = ["## bench-speed (random weights, same process per row group)", "",
            "| run | dtype | res | batch | protocol | ms/image | images/s | peak MiB | × one-step |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, report in results.items():
        if not name.startswith("bench_"):
            continue
        base = report["latency_ms_per_image"]
        for r in report["runs"]:
            rows.append(f"| {name} | {r['dtype']} | {r['resolution']} | {r['batch_size']} | {r['label']} | "
                        f"{r['latency_ms_per_image']:.1f} | {r['images_per_s']:.1f} | {r['peak_memory_mb']:.0f} | "
                        f"{r['latency_ms_per_image'] / base:.2f} |")
    return rows + [""] if len(rows) > 4 else []


def _end_to_end(results: dict) -> list[str]:
    lines = []
    p = results.get("predict")
    if p:
        lines += ["## predict end to end (JPEG on disk -> npy, 16-bit PNG, colour PNG written)", "",
                  f"{p['images']} images of {p['input_side']}² at {p['resolution']}², {p['dtype']}, automatic batch: "
                  f"**{_rate(p['images_per_s'])} images/s** after start-up ({p['images_per_s_with_start']:.1f} with "
                  f"start-up and model load), {p['files_written']} files written; with the next batch launched "
                  f"only after the current one is collected (GENPERCEPT_QUEUE_DEPTH=1): "
                  f"{_rate(p.get('images_per_s_queue_depth_1'))} images/s.", ""]
    e = results.get("eval")
    if e:
        lines += [f"**eval** on a synthetic NYU archive ({e['samples']} samples): {e['seconds']:.1f} s end to end.",
                  ""]
    return lines


def _targets(results: dict) -> list[str]:
    one_step = [(r["images_per_s"], name) for name, rep in results.items() if name.startswith("bench_")
                and not name.endswith("_dpt") for r in rep["runs"] if r["protocol"] == "genpercept"]
    peers = [(rep["speedups"]["diffusers_marigold_1x1"], name) for name, rep in results.items()
             if name.startswith("bench_") and "diffusers_marigold_1x1" in rep.get("speedups", {})]
    batch1 = [r["peak_memory_mb"] for name, rep in results.items() if name.startswith("bench_")
              for r in rep["runs"] if r["protocol"] == "genpercept" and r["batch_size"] == 1]
    lines = ["## Against the targets", "", "| target | measured |", "|---|---|"]
    if one_step:
        best = max(one_step)
        lines.append(f"| ≥ 30 images/s, VAE-decoder model, best batch | {best[0]:.1f} ({best[1]}) |")
    if peers:
        best = max(peers)
        lines.append(f"| ≥ 2× diffusers MarigoldDepthPipeline at one step | {best[0]:.2f}× ({best[1]}) |")
    if batch1:
        lines.append(f"| peak memory at batch 1 ≤ 4 GB | {min(batch1) / 1024:.2f} GiB |")
    return lines + [""] if len(lines) > 4 else []


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
