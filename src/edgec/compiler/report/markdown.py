"""The bundle's human-readable report (``report/report.md``), rendered from the manifest."""

from __future__ import annotations

from pathlib import Path


def _fmt_ms(latency: dict) -> str:
    return f"{latency['p50']:.3f} / {latency['p99']:.3f} ({latency['source']})"


def _fmt_share(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def render_report(manifest: dict) -> str:
    """Markdown summary: target, stages, policy."""
    target = manifest["target"]
    lines = [
        f"# edgec bundle: {manifest['source']['path']} for {target['name']}",
        "",
        f"- target: `{target['name']}` (gateway: `{target.get('gateway') or 'none'}`)",
        f"- source sha256: `{manifest['source']['sha256']}`",
        f"- edgec {manifest['edgec_version']}",
        "",
        "## Stages (cascade order)",
        "",
        "| stage | role | tier | backend | precision | MACs | latency p50 / p99 ms | accuracy |",
        "|---|---|---|---|---|---:|---|---:|",
    ]
    for stage in manifest["stages"]:
        lines.append(
            f"| {stage['name']} | {stage['role']} | {stage['tier']} | {stage['backend']} | "
            f"{stage['precision']} | {stage['macs']:,} | {_fmt_ms(stage['latency_ms'])} | "
            f"{_fmt_share(stage.get('accuracy'))} |"
        )
    lines += batching_lines(manifest["stages"])
    lines += int8_fp32_lines(manifest["stages"])
    fallbacks = [s["backend_fallback"] for s in manifest["stages"] if s.get("backend_fallback")]
    if fallbacks:
        lines += ["", *(f"- note: {f['note']}" for f in fallbacks)]
    policy = manifest["policy"]
    lines += ["", "## Policy", ""]
    if policy.get("budget_ms") is not None:
        lines.append(f"- budget: {policy['budget_ms']:g} ms at p{policy['percentile']}")
    lines.append(f"- pipeline latency p50 / p99 ms: {_fmt_ms(policy['latency_ms'])}")
    if policy.get("expected_accuracy") is not None:
        lines.append(f"- expected accuracy: {_fmt_share(policy['expected_accuracy'])}")
    if len(manifest["stages"]) > 1 and policy.get("pareto"):
        lines += cascade_section(policy)
    if manifest.get("partition"):
        lines += partition_section(manifest["partition"])
    lines += [
        "",
        "Latency sources: `measured-host` was timed on the compiling machine, "
        "`measured-device` on the device itself, `estimated` comes from the roofline cost "
        "model and the target descriptor's published peaks.",
        "",
    ]
    return "\n".join(lines)


def batching_lines(stages: list[dict]) -> list[str]:
    """One line per gateway stage: the batch it takes and its measured per-frame cost."""
    lines = []
    for stage in stages:
        batching = stage.get("batching")
        if not batching:
            continue
        if batching["max_batch"] <= 1:
            lines.append(f"- {stage['name']}: gateway batch 1 only ({batching['reason']})")
            continue
        per_frame = batching.get("per_frame_ms")
        cost = (
            ", ".join(f"batch {k} {v:.3f} ms/frame" for k, v in per_frame.items())
            if per_frame
            else "not timed here"
        )
        lines.append(
            f"- {stage['name']}: gateway batch up to {batching['max_batch']} "
            f"(checked against batch 1), {cost}"
        )
    return ["", *lines] if lines else []


def int8_fp32_lines(stages: list[dict]) -> list[str]:
    """Per INT8 stage with layers kept FP32: which, and why (the accuracy guard's steps: the
    output SQNR with each group quantized and kept FP32; the rest is the FP32 stem)."""
    lines = []
    for stage in stages:
        kept = stage.get("fp32_layers") or []
        if stage.get("precision") != "int8" or not kept:
            continue
        steps = (stage.get("precision_decision") or {}).get("guard_steps") or []
        lines += ["", f"### INT8 layers kept FP32 in `{stage['name']}`", ""]
        guarded = set()
        for step in steps:
            guarded.update(step["nodes"])
            nodes = ", ".join(f"`{n}`" for n in step["nodes"])
            added = ""
            if "output_sqnr_db_quantized" in step:
                added = (
                    f"; output SQNR {step['output_sqnr_db_quantized']:.1f} dB with them "
                    f"quantized, {step['output_sqnr_db_kept_fp32']:.1f} dB kept FP32"
                )
            lines.append(
                f"- {nodes}: accuracy guard (tensor `{step['tensor']}` quantizes to "
                f"{step['tensor_sqnr_db']:.1f} dB{added})"
            )
        stem = [n for n in kept if n not in guarded]
        if stem:
            lines.append(
                f"- {', '.join(f'`{n}`' for n in stem)}: the stem, kept FP32 by the flavour "
                "(timed faster that way)"
            )
    return lines


def partition_section(partition: dict) -> list[str]:
    """Markdown lines: where the teacher is split and the cheapest options it was chosen from."""
    estimate = partition["estimate"]
    sent = f"sends `{partition['tensor']}` {partition['shape']}" if partition["tensor"] else ""
    lines = [
        "",
        "## Partition",
        "",
        f"- cut: `{partition['cut']}` ({partition['encoding']}) {sent}".rstrip(),
        f"- objective: {partition['objective']}; {estimate['source']} "
        f"{estimate['total_ms']:.3f} ms end to end (device {estimate['device_ms']:.3f} + "
        f"link {estimate['transfer_ms']:.3f} + gateway {estimate['gateway_ms']:.3f}), "
        f"{estimate['device_energy_mj']:.3f} mJ on the device",
        "",
        "| cut | encoding | bytes | total ms | device mJ | fits |",
        "|---|---|---:|---:|---:|---|",
    ]
    key = "total_ms" if partition["objective"] == "latency" else "device_energy_mj"
    for option in sorted(partition["options"], key=lambda o: o[key])[:10]:
        lines.append(
            f"| `{option['cut']}` | {option['encoding']} | {option['payload_bytes']:,} | "
            f"{option['total_ms']:.3f} | {option['device_energy_mj']:.3f} | "
            f"{'yes' if option['feasible'] else 'no'} |"
        )
    return lines


def cascade_section(policy: dict) -> list[str]:
    """Markdown lines: the cascade's thresholds, exits and its accuracy–latency front."""
    from edgec.compiler.report.plots import pareto_table

    shown = ", ".join(f"{n} ≥ {t:.4g}" for n, t in policy["thresholds"].items())
    exits = ", ".join(f"{n} {100 * s:.1f}%" for n, s in policy["exit_shares"].items())
    lines = [
        f"- confidence `{policy['confidence']}`, thresholds: {shown}; fusion `{policy['fusion']}`",
        f"- answered by: {exits}; offload rate {100 * policy['offload_rate']:.1f}%",
        f"- feasible: {'yes' if policy['feasible'] else 'NO (no policy meets the budget)'}",
        "- the pipeline latency is simulated on the validation split from each stage's latency "
        "distribution and the descriptor's link (`estimated` when frames cross the link)",
        "",
        "### Accuracy–latency Pareto front (validation split)",
        "",
        "![Pareto front](pareto.png)",
        "",
    ]
    return lines + pareto_table(policy)


def write_report(root: Path, manifest: dict) -> Path:
    """Write ``report/report.md`` (and, for a cascade, ``report/pareto.png``)."""
    path = root / "report" / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(manifest))
    if len(manifest["stages"]) > 1 and manifest["policy"].get("pareto"):
        from edgec.compiler.report.plots import write_pareto_plot

        write_pareto_plot(path.parent / "pareto.png", manifest["policy"])
    return path
