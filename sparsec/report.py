"""Text renderings of analysis, compression and validation results (the JSON forms are the
``to_json()`` / dict values themselves; text and JSON carry the same figures)."""

from __future__ import annotations

from sparsec.validate import Validation, oracle_limit_text, worst_output


def human(number: float | int | None) -> str:
    """1234567 → '1.23 M' (None → '-')."""
    if number is None:
        return "-"
    for scale, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " K")):
        if abs(number) >= scale:
            return f"{number / scale:.3g}{suffix}"
    return f"{number:.3g}" if isinstance(number, float) else str(number)


def _ratio(before, after) -> str:
    return f"{after / before:.3f}" if before and after is not None else "-"


def table(rows: list[list[str]], header: list[str], left: tuple[int, ...] = (0,)) -> str:
    """Columns padded to width; those in ``left`` left-aligned (text), the others right (numbers)."""
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(header)] + [line(row) for row in rows])


def compress_text(result, extra: list[str] | None = None, written: bool = True) -> str:
    """The before/after table, validation and diagnostics, ``extra`` sections (quality, gates),
    and the line saying where the model was written (or that nothing was)."""
    b, a, v = result.before, result.after, result.validation
    rows = [
        ["nodes", str(b.nodes), str(a.nodes), _ratio(b.nodes, a.nodes)],
        ["params", human(b.params), human(a.params), _ratio(b.params, a.params)],
        ["MACs", human(b.macs), human(a.macs), _ratio(b.macs, a.macs)],
        *_other_work_rows(b, a),
        ["file bytes", human(b.bytes), human(a.bytes), _ratio(b.bytes, a.bytes)],
        [
            "latency ms",
            _ms(v.latency_ms_reference),
            _ms(v.latency_ms_candidate),
            _ratio(v.latency_ms_reference, v.latency_ms_candidate),
        ],
    ]
    parts = [f"pipeline: {result.pipeline}", table(rows, ["", "before", "after", "ratio"])]
    if result.sparsity:
        parts.append(sparsity_text(result.sparsity))
    if getattr(result, "blocks", None):
        parts.append(blocks_text(result.blocks))
    if result.oracle is not None:
        parts.append(oracle_text(result.oracle))
        if result.lossy_couplings:
            parts.append(lossy_text(result.lossy_couplings))
        parts.append(
            validation_text(
                v, title="difference from the original (lossy pipeline: reported, not gated)"
            )
        )
    else:
        parts.append(validation_text(v))
    if result.diagnostics:
        parts.append("\n".join(str(d) for d in result.diagnostics))
    parts.extend(part for part in extra or [] if part)
    parts.append(f"wrote {result.output}" if written else "nothing written (see the error below)")
    return "\n\n".join(parts)


def blocks_text(blocks: list[dict]) -> str:
    """The blocks depth pruning removed: a line each (scope, kind, score, MACs, params)."""
    rows = [
        [
            str(b.get("scope") or b.get("exit")),
            str(b.get("kind")),
            f"{b['score']:.4g}" if b.get("score") is not None else "-",
            human(b.get("macs")),
            human(b.get("params")),
        ]
        for b in blocks
    ]
    units = sum(max(1, len(b.get("parts") or ())) for b in blocks)  # a transformer layer: 2
    return f"dropped {units} block(s):\n" + table(
        rows, ["block", "kind", "score", "MACs", "params"], left=(0, 1)
    )


def _other_work_rows(before, after) -> list[list[str]]:
    """Rows for the work MACs leave out (``analysis.cost``: other ops, bytes moved), when the
    figures carry it."""
    rows = []
    for label, key in (("other ops", "other_ops"), ("bytes moved", "bytes_moved")):
        b, a = getattr(before, key, None), getattr(after, key, None)
        if b is not None and a is not None:
            rows.append([label, human(b), human(a), _ratio(b, a)])
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def sparsity_text(tensors: list[dict]) -> str:
    rows = [
        [
            t["name"],
            t["pattern"],
            str(t["axis"]),
            human(t["elements"]),
            f"{100 * t['sparsity']:.1f} %",
        ]
        for t in tensors
    ]
    return table(rows, ["weight", "pattern", "axis", "elements", "zeros"], left=(0, 1))


def oracle_text(oracle: Validation) -> str:
    worst = worst_output(oracle.outputs)
    detail = (
        ""
        if worst is None
        else (
            f": max abs error {worst.max_abs:.3g} on '{worst.name}' "
            f"(limit {oracle_limit_text(worst.max_abs_reference)})"
        )
    )
    return (
        f"oracle (equal to the original with what was removed masked out) on {oracle.inputs}: "
        f"{'passed' if oracle.passed else 'FAILED'}{detail}"
    )


def lossy_text(lossy: dict) -> str:
    """Two lines: the nodes pruned through although they mix channels, and what that cost
    (``oracle.lossy_error``: the pruned model against the plain masked original)."""
    ops = ", ".join(f"{op} x{count}" for op, count in sorted(lossy["ops"].items()))
    error = lossy["max_abs_error"]
    figures = (
        "not finite"
        if error is None
        else f"max abs {error:.3g} on '{lossy['output']}' (relative {lossy['relative_error']:.3g}"
        + ("" if lossy["cosine"] is None else f", cosine {lossy['cosine']:.6f}")
        + ")"
    )
    return (
        f"lossy couplings pruned through (--lossy-couplings): {lossy['nodes']} node(s) ({ops})\n"
        f"  their loss, pruned vs the plain masked original: {figures}"
    )


def validation_text(v: Validation, title: str = "") -> str:
    rows = [
        [
            o.name,
            _shape_cell(o),
            f"{o.max_abs:.3g}",
            f"{o.max_rel:.3g}",
            "-" if o.cosine is None else f"{o.cosine:.6f}",
            "-" if o.top1 is None else f"{o.top1:.3f}",
            "ok" if o.passed else ("-" if title else "FAIL"),
        ]
        for o in v.outputs
    ]
    head = (
        f"{title} on {v.inputs}"
        if title
        else f"validation on {v.inputs} (rtol {v.rtol:g}, atol {v.atol:g}): {'passed' if v.passed else 'FAILED'}"
    )
    body = table(rows, ["output", "shape", "max abs", "max rel", "cosine", "top-1", ""])
    problems = "".join(f"\n{o.name}: {o.problem}" for o in v.outputs if o.problem)
    latency = f"latency median ms: reference {_ms(v.latency_ms_reference)}, candidate {_ms(v.latency_ms_candidate)}"
    return f"{head}\n{body}{problems}\n{latency}"


def _shape_cell(o) -> str:
    """A tensor's dims ('360x10'); a non-tensor's type, with a sequence's or map's length in brackets."""
    dims = "x".join(map(str, o.shape))
    if o.is_tensor():
        return dims
    if o.type.startswith(("seq(", "map(")):
        return f"{o.type}[{dims}]"
    return f"{o.type} {dims}".rstrip()


def _value_text(info: dict) -> str:
    """'name dtype shape' for a tensor; 'name type' for a sequence, map or optional."""
    if not _is_tensor_info(info):
        return f"{info['name']} {info['type']}"
    dtype = (
        "string" if info.get("type") == "tensor(string)" else info["dtype"]
    )  # numpy would say 'object'
    return f"{info['name']} {dtype} {info['shape']}"


def _is_tensor_info(info: dict) -> bool:
    return not info.get("type") or info["type"].startswith("tensor(")


def analyze_text(summary: dict) -> str:
    inputs = ", ".join(
        f"{_value_text(i)} (bound {i.get('bound_shape')})" if _is_tensor_info(i) else _value_text(i)
        for i in summary["inputs"]
    )
    outputs = ", ".join(_value_text(o) for o in summary["outputs"])
    head = [
        f"model     {summary['model']}  ({summary['producer']})",
        "opsets    " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in summary["opsets"].items()),
        f"inputs    {inputs}",
        f"outputs   {outputs}",
        f"nodes     {summary['nodes']}   functions {summary['functions']}   file bytes {human(summary['bytes'])}",
        f"params    {human(summary['params'])} ({summary['params']:,})",
        f"MACs      {human(summary['macs'])} ({summary['macs']:,}) at the bound input shapes",
    ]
    if "other_ops" in summary:  # what MACs leave out (analysis.cost): estimates, not measured
        head.append(
            f"other ops {human(summary['other_ops'])} (elementwise, normalization, pooling, "
            f"resize, softmax)   bytes moved {human(summary['bytes_moved'])} (data movement)"
        )
    if summary["macs_unknown_nodes"]:
        head.append(
            f"MACs unknown for {len(summary['macs_unknown_nodes'])} nodes (shapes unresolved): "
            + ", ".join(summary["macs_unknown_nodes"][:5])
        )
    cost = summary["cost_by_op"]
    rows = [
        [
            op,
            str(count),
            human(cost.get(op, {}).get("params", 0)),
            human(cost.get(op, {}).get("macs", 0)),
            human(cost.get(op, {}).get("other_ops", 0)),
            human(cost.get(op, {}).get("bytes_moved", 0)),
        ]
        for op, count in summary["op_histogram"].items()
    ]
    header = ["op", "count", "params", "MACs", "other ops", "bytes moved"]
    text = "\n".join(head) + "\n\n" + table(rows, header)
    if "channel_groups" in summary:
        text += "\n\n" + groups_text(summary["channel_groups"])
        for node, op in summary.get("channel_barriers", {}).items():
            text += f"\nbarrier: {node or '(unnamed)'} ({op}) has no axis rule; groups through it are kept"
    if "layers" in summary:
        text += "\n\n" + layers_text(summary["layers"])
    if "attention_blocks" in summary:
        text += "\n\n" + heads_text(summary["attention_blocks"])
    if "blocks" in summary:
        text += "\n\n" + block_list_text(summary["blocks"])
    return text


def heads_text(blocks: list[dict]) -> str:
    """One row per attention block: heads / KV heads / head_dim, its weights, how it was found."""
    rows = []
    for block in blocks:
        weights = "  ".join(
            f"{role.upper()} {', '.join(block[role]) or '?'}" for role in ("q", "k", "v", "o")
        )
        status = "prunable" if block["reason"] is None else f"kept: {block['reason']}"
        rows.append(
            [
                str(block["group"]),
                str(block["heads"]),
                str(block["kv_heads"]),
                str(block["head_dim"] or "?"),
                block["form"],
                weights,
                status,
            ]
        )
    head = f"attention blocks: {len(blocks)}" + ("" if blocks else " (no attention heads found)")
    return head + (
        "\n"
        + table(
            rows,
            ["group", "heads", "kv", "head_dim", "found as", "weights", "status"],
            left=(4, 5, 6),
        )
        if rows
        else ""
    )


def block_list_text(blocks: list[dict]) -> str:
    """One row per removable unit (``inspection.blocks``' rows): id, kind, role, scope, params,
    MACs and their share of the model's, removable or why not, the finer units it holds, and a
    ``score`` column when the rows carry one."""
    scored = any("score" in b for b in blocks)
    rows = []
    for b in blocks:
        share = b.get("macs_share")
        row = [
            str(b["id"]),
            b["kind"],
            b["role"] or "-",
            b["scope"] or b["exit"],
            human(b["params"]),
            human(b["macs"]),
            "-" if share is None else f"{100 * share:.1f}%",
            "removable" if b["removable"] else f"kept: {b['reason']}",
            ",".join(map(str, b["parts"])) or "-",
        ]
        score = b.get("score")
        rows.append(row + ([f"{score:.4g}" if score is not None else "-"] if scored else []))
    removable = sum(1 for b in blocks if b["removable"])
    head = f"blocks: {len(blocks)}" + (
        f" ({_block_counts(blocks)}; {removable} removable)"
        if blocks
        else " (no removable unit found)"
    )
    header = ["id", "kind", "role", "scope", "params", "MACs", "% MACs", "status", "parts"]
    header += ["score"] if scored else []
    return head + ("\n" + table(rows, header, left=(1, 2, 3, 7, 8)) if rows else "")


_BLOCK_KINDS = ("residual", "projection", "layer", "transformer-layer")


def _block_counts(blocks: list[dict]) -> str:
    """``residual 12 (attention 6, mlp 6), transformer-layer 6``: per kind, per role when mixed."""
    parts = []
    for kind in _BLOCK_KINDS:
        roles = [b["role"] or "-" for b in blocks if b["kind"] == kind]
        if roles:
            split = sorted(set(roles))
            detail = " (" + ", ".join(f"{r} {roles.count(r)}" for r in split) + ")"
            parts.append(f"{kind} {len(roles)}" + (detail if len(split) > 1 else ""))
    return ", ".join(parts)


def groups_text(groups: list[dict]) -> str:
    """One row per channel group: channels, whether --channels prunes it (or why not), weights."""
    rows = []
    for group in groups:
        weights = ", ".join(group["weights"][:3]) + (
            f" +{len(group['weights']) - 3}" if len(group["weights"]) > 3 else ""
        )
        status = "prunable" if group["prunable"] else f"kept: {group['reason']}"
        if group["prunable"] and group.get("lossy"):
            status += f" (lossy: {', '.join(group['lossy'])})"
        rows.append(
            [str(group["id"]), str(group["channels"]), str(len(group["members"])), weights, status]
        )
    prunable = sum(1 for g in groups if g["prunable"])
    head = f"channel groups: {len(groups)} ({prunable} prunable)"
    return (
        head
        + "\n"
        + table(rows, ["group", "channels", "members", "weights", "status"], left=(3, 4))
    )


def layers_text(layers: list) -> str:
    """One row per layer (``analysis.lookup.layer_table``'s rows or their ``to_json()``): the
    groups holding its output and input channels, their sizes, and whether its output channels
    can be pruned or why not."""
    layers = [row.to_json() if hasattr(row, "to_json") else row for row in layers]
    rows = []
    for layer in layers:
        out, into = layer["output"], layer["input"]
        status = "-" if out is None else "prunable" if out["prunable"] else f"kept: {out['reason']}"
        rows.append(
            [
                layer["node"] or "(unnamed)",
                layer["op"],
                layer["module"] or "-",
                _group_cell(out),
                _group_cell(into),
                status,
            ]
        )
    prunable = sum(1 for layer in layers if layer["output"] and layer["output"]["prunable"])
    head = f"layers: {len(layers)} ({prunable} with prunable output channels)"
    header = ["layer", "op", "module", "out group", "in group", "output channels"]
    return head + ("\n" + table(rows, header, left=(0, 1, 2, 5)) if rows else "")


def activations_text(report) -> str:
    """One row per measured value of an activation-sparsity report (``ActivationReport`` or its
    ``to_json()``): zeros, near-zeros, dead channels, the MACs of the layers reading it and what
    skipping its zeros would save; then the total and the dead channels' indices."""
    data = report.to_json() if hasattr(report, "to_json") else report
    rows, dead = [], []
    for row in data["values"]:
        channels = (
            "-" if row["channels"] is None else f"{len(row['dead_channels'])}/{row['channels']}"
        )
        rows.append(
            [
                row["name"],
                row["producer"],
                f"{row['zero_fraction']:.1%}",
                f"{row['near_zero_fraction']:.1%}",
                channels,
                human(row["macs"]) if row["macs"] else "-",
                human(row["macs_saved"]) if row["macs"] else "-",
            ]
        )
        if row["dead_channels"]:
            shown = ", ".join(map(str, row["dead_channels"][:DEAD_SHOWN]))
            more = len(row["dead_channels"]) - DEAD_SHOWN
            dead.append(
                f"dead channels of {row['name']}: channel(s) {shown}"
                + (f" (+{more})" if more > 0 else "")
            )
    head = (
        f"activations: {len(rows)} values on {data['samples']} calibration samples "
        f"(near-zero: |x| <= {data['threshold']:g}; dead: zero on every sample)"
    )
    header = ["value", "op", "zeros", "near-0", "dead", "layer MACs", "saved"]
    total = (
        f"MACs a zero-skipping runtime would save: {human(data['macs_saved'])} of "
        f"{human(data['macs'])} ({data['macs_saved_fraction']:.1%}) per inference"
    )
    return "\n".join([head, table(rows, header, left=(0, 1)), total, *dead])


DEAD_SHOWN = 12  # dead channel indices listed per value in the text report


def _group_cell(group: dict | None) -> str:
    """``3 (64)``: a group's id and channels (``2 (4 heads)``: attention heads); ``kept`` when
    it cannot be pruned; ``-``: none."""
    if group is None:
        return "-"
    heads = " heads" if group.get("kind") == "heads" else ""
    kept = "" if group["prunable"] else " kept"
    return f"{group['group']} ({group['channels']}{heads}){kept}"


def job_text(outcome) -> str:
    """A job's compression tables, then its quality figures and gates (warnings are printed
    on their own, once, on stderr)."""
    quality = quality_text(outcome.evaluation, outcome.gates, [])
    return compress_text(outcome.result, [quality], written=outcome.error is None)


def quality_text(evaluation, gates: list, warnings: list[str]) -> str:
    """The evaluation table (per output, before/after), the gates table and the warnings."""
    parts = []
    if evaluation is not None:
        rows = [
            [
                o.name,
                _fraction(o.accuracy_before),
                _fraction(o.accuracy_after),
                _fraction(o.agreement),
                "-" if o.cosine is None else f"{o.cosine:.4f}",
                f"{o.max_abs:.3g}",
            ]
            for o in evaluation.outputs
        ]
        header = ["output", "top-1 before", "top-1 after", "agreement", "cosine", "max abs"]
        parts.append(f"quality on {evaluation.data}\n" + table(rows, header))
    if gates:
        rows = [
            [
                g.option,
                f"{g.limit:g}",
                f"{g.measured:.4g}",
                "passed" if g.passed else "FAILED",
                g.detail,
            ]
            for g in gates
        ]
        parts.append(
            "gates\n" + table(rows, ["gate", "limit", "measured", "", "on"], left=(0, 3, 4))
        )
    parts.extend(warnings)
    return "\n\n".join(parts)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
