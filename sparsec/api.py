"""The Python API behind every CLI command: analyze, compress, validate.

``compress`` is all-or-nothing: every input problem (bad model, bad flag, output path equal to
the input, unknown pass) is found before any work, and the output file is written only after
the candidate passed the ONNX checker's full check and onnxruntime validation against the
original. The pipeline text is recorded in the output's ``metadata_props``.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sparsec import __version__
from sparsec.analysis.cost import analyze_cost
from sparsec.analysis.inputs import (
    bind_shapes,
    feed_shapes,
    load_npz,
    random_inputs,
)
from sparsec.analysis.quantized import is_quantized
from sparsec.errors import InputError, ValidationError
from sparsec.inspection import (
    analyze,
    as_pruned,
    attention_heads,
    calibration_spec,
    channel_groups,
    input_overrides,
    layers,
    sensitivity,
)
from sparsec.ir import Model, refuse_unwritable, runtime
from sparsec.ir.gc_pause import holding
from sparsec.ir.saving import Staged
from sparsec.passes import Diagnostic, PassBase, PassResult, Pipeline, parse_pipeline
from sparsec.passes.builtin import (
    after_cut_passes,
    canonical_passes,
    cleanup_passes,
    default_pipeline,
)
from sparsec.passes.channel_prune import ChannelPrunePass
from sparsec.passes.cleanup import DeadCodePass
from sparsec.passes.dead_channels import DeadChannelsPass
from sparsec.passes.drop_blocks import DropBlocksPass
from sparsec.passes.sparse_format import DECODER_PREFIX, FORMAT_KEY, SparseEncodePass
from sparsec.passes.sparse_format import densify as densify_weights
from sparsec.passes.sparsity import WeightSparsityPass
from sparsec.pruning.oracle import lossy_error
from sparsec.pruning.oracle_gate import run_oracle
from sparsec.pruning.plans import plan_files, read_plan, refit_path
from sparsec.spec.options import default_importance
from sparsec.validate import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    ORACLE_TOLERANCE,
    Validation,
    check_encoded,
    validate,
)

PIPELINE_METADATA_KEY = "sparsec.pipeline"

__all__ = [  # with the read-only half (``sparsec.inspection``) re-exported
    "PIPELINE_METADATA_KEY",
    "CompressResult",
    "Figures",
    "Model",
    "analyze",
    "as_pruned",
    "attention_heads",
    "canonical_passes",
    "channel_groups",
    "block_passes",
    "channel_passes",
    "cleanup_with_calibration",
    "check_destinations",
    "compress",
    "densify",
    "encoding_passes",
    "failure_line",
    "figures",
    "layers",
    "prepare_feeds",
    "sensitivity",
    "sparsity_passes",
    "validate_files",
]


@dataclass
class Figures:
    """The before/after numbers of a model."""

    nodes: int
    params: int
    macs: int
    bytes: int | None
    ops: dict[str, dict[str, int]] = field(default_factory=dict)  # op type → nodes, params, macs
    other_ops: int | None = None  # work MACs leave out (analysis.cost): element operations
    bytes_moved: int | None = None  # and bytes written by data-movement ops (estimates)

    def to_json(self) -> dict:
        """The figures as a JSON object (nodes, params, macs, bytes, other_ops, bytes_moved)."""
        keys = ("nodes", "params", "macs", "bytes", "other_ops", "bytes_moved")
        return {key: getattr(self, key) for key in keys}


def figures(model: Model, shapes: dict[str, tuple[int, ...]], file_bytes: int | None) -> Figures:
    """The size figures of ``model`` at input ``shapes`` (``file_bytes``: its file size)."""
    cost = analyze_cost(model, shapes)
    by_op = cost.by_op()
    ops = {
        op: {"nodes": count, **{k: int(by_op.get(op, {}).get(k, 0)) for k in ("params", "macs")}}
        for op, count in Counter(n.op_type for n in model.nodes()).items()
    }
    return Figures(
        len(model.nodes()),
        cost.params,
        cost.macs,
        file_bytes,
        ops,
        cost.other_ops,
        cost.bytes_moved,
    )


def prepare_feeds(
    model: Model, input_shapes: Sequence[str] = (), inputs: str | Path | None = None, seed: int = 0
) -> tuple[dict, str]:
    """Feeds for running ``model``: user ``.npz`` data, else seeded random at the bound shapes."""
    overrides = input_overrides(model, input_shapes, inputs)
    if inputs is not None:
        return load_npz(inputs, model), str(inputs)
    return random_inputs(model, bind_shapes(model, overrides), seed), f"random (seed {seed})"


@dataclass
class CompressResult:
    """What ``compress`` did: the size figures ``before`` and ``after``, the ``pipeline`` text,
    the ``validation`` against the original, the passes' ``stats`` and ``diagnostics``, where
    the model was written, the oracle's verdict, timings and memory (``to_json``: the report)."""

    before: Figures
    after: Figures
    pipeline: str
    validation: Validation  # against the original (informational when the pipeline is lossy)
    stats: dict[str, float] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    output: str = ""
    oracle: Validation | None = None  # against the masked original, when a pass was lossy
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    weight_bytes: int = 0
    sparsity: list[dict] | None = None  # per tensor, when weight-sparsity ran
    encoding: list[dict] | None = None  # per tensor, when sparse-encode ran (bytes dense / encoded)
    lossy_couplings: dict | None = None  # nodes pruned through and their cost (oracle.lossy_error)
    blocks: list[dict] | None = None  # the blocks drop-blocks removed, with their score

    def to_json(self) -> dict:
        """The run as the JSON report's object (figures before and after, passes, stats)."""
        report = {
            f"{key}_{when}": getattr(fig, key)
            for when, fig in (("before", self.before), ("after", self.after))
            for key in ("nodes", "params", "macs", "bytes")
        }
        report.update(
            output=self.output,
            pipeline=self.pipeline,
            validation=self.validation.to_json(),
            validation_gated=self.oracle is None,
            latency_ms_before=self.validation.latency_ms_reference,
            latency_ms_after=self.validation.latency_ms_candidate,
            oracle=None if self.oracle is None else _oracle_json(self.oracle),
            lossy_couplings=self.lossy_couplings,
            blocks_dropped=self.blocks,
            groups=_groups_json(self.stats),
            sparsity=self.sparsity,
            encoding=self.encoding,
            timings_s=self.timings_s,
            peak_rss_mb=self.peak_rss_mb,
            weight_bytes=self.weight_bytes,
            stats=self.stats,
            diagnostics=[d.to_json() for d in self.diagnostics],
            sparsec_version=__version__,
        )
        return report


def _oracle_json(oracle: Validation) -> dict:
    worst = max((o.max_abs for o in oracle.outputs), default=0.0)
    return {
        "passed": oracle.passed,
        "max_abs_error": worst if math.isfinite(worst) else None,  # strict JSON
        "max_abs_output": max((o.max_abs_reference for o in oracle.outputs), default=0.0),
        "tolerance": ORACLE_TOLERANCE,
    }


def _groups_json(stats: dict[str, float]) -> dict | None:
    if "channel-prune.groups" not in stats:
        return None
    return {
        "total": int(stats["channel-prune.groups"]),
        "pruned": int(stats["channel-prune.groups_pruned"]),
    }


def compress(
    source: str | Path,
    output: str | Path,
    *,
    pipeline: str | Sequence[PassBase] | None = None,
    input_shapes: Sequence[str] = (),
    inputs: str | Path | None = None,
    force: bool = False,
    plan_out: str | Path | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    latency_runs: int = 10,
    on_pass: Callable[[PassBase, PassResult], None] | None = None,
    metadata: Mapping[str, str] | None = None,
    side_outputs: Sequence[str | Path] = (),
    finish: Callable[[Model, CompressResult, Staged, dict], None] | None = None,
    on_checked: Callable[[], None] | None = None,
) -> CompressResult:
    """Load ``source``, run the pipeline, validate, write ``output`` (and the channel
    ``plan_out`` when asked), with ``metadata`` added to the output's ``metadata_props``.

    ``finish``, when given, is called after validation with the compressed model, the result,
    the staged save and the validation feeds, before anything is in place: it may add side files (written with the
    model) or raise (nothing is written). ``side_outputs`` are the paths it will write, checked
    with the output before any work; ``on_checked`` is called once every output path passed.

    A lossless pipeline must match the original (atol + rtol·|ref|). A lossy one (a pass that
    set ``PassResult.reference``) must match its masked original within
    ``ORACLE_TOLERANCE``·max |output|; its difference from the original is reported, not gated.
    """
    clock, rss = _Clock(), _peak_rss_mb()
    model = Model.load(source)
    clock.lap("load")
    with holding(), model.spilling(runtime.LARGE_MODEL_BYTES):  # large new weights: mapped
        return _compress_loaded(
            model,
            source,
            output,
            clock,
            rss,
            pipeline=pipeline,
            input_shapes=input_shapes,
            inputs=inputs,
            force=force,
            plan_out=plan_out,
            rtol=rtol,
            atol=atol,
            latency_runs=latency_runs,
            on_pass=on_pass,
            metadata=metadata or {},
            side_outputs=side_outputs,
            finish=finish,
            on_checked=on_checked,
        )


def _compress_loaded(
    model,
    source,
    output,
    clock,
    rss,
    *,
    pipeline,
    input_shapes,
    inputs,
    force,
    plan_out,
    rtol,
    atol,
    latency_runs,
    on_pass,
    metadata,
    side_outputs,
    finish,
    on_checked,
) -> CompressResult:
    """``compress`` after loading: check outputs, run the pipeline, validate, write."""
    if plan_out is not None and str(plan_out) == "-":
        raise InputError(
            "--plan-out needs a file path (its refit weights go beside it); "
            "/dev/stdout prints the plan alone"
        )
    refit_out = refit_path(plan_out) if plan_out is not None else None  # beside the plan
    extra = [
        Path(p) for p in (plan_out, refit_out, *side_outputs) if p is not None and str(p) != "-"
    ]
    check_destinations(model, Path(output), extra, force)
    if on_checked is not None:
        on_checked()
    feeds, label = prepare_feeds(model, input_shapes, inputs)
    shapes = feed_shapes(feeds)
    model.input_shapes = dict(shapes)  # the passes analyse the model at the shapes it runs
    runner = _pipeline(pipeline, on_pass)
    if plan_out is not None and not any(getattr(p, "writes_plan", False) for p in runner.passes):
        raise InputError(
            "--plan-out needs a pass that writes a plan (--channels, --plan-in or channel-prune)"
        )
    before = figures(model, shapes, model.source_bytes)
    weight_bytes = model.weight_bytes()
    clock.lap("analysis")
    result = runner(model)
    model = result.model  # a functional pass returns a new model
    model.set_metadata(PIPELINE_METADATA_KEY, runner.describe())
    for key, value in metadata.items():
        model.set_metadata(key, value)
    clock.lap("passes")
    memory = {"baseline": rss, "compile": max(0.0, _peak_rss_mb() - rss)}
    try:
        oracle, validation = _validate(
            model, result, source, feeds, label, rtol=rtol, atol=atol, latency_runs=latency_runs
        )
    except InputError as error:  # onnxruntime refused to run: the feeds, or the compressed model
        if not str(error).startswith("onnxruntime failed to run the model"):
            raise
        if runtime.runs(Path(source), feeds):
            raise ValidationError(
                f"the compressed model fails on inputs the original runs (nothing written): {error}"
            ) from None
        raise type(error)(f"{error}{_shapes_hint(feeds, label)}") from None
    lossy = _lossy_couplings(model, result, feeds) if oracle is not None else None
    clock.lap("validate")
    with model.staged_save(
        output, force=force
    ) as stage:  # the model, the plan and the report go in together
        clock.lap("save")  # the write; the commit only renames
        after = figures(model, shapes, stage.bytes)
        outcome = CompressResult(
            before,
            after,
            runner.describe(),
            validation,
            result.stats,
            result.diagnostics,
            str(output),
            oracle,
            clock.laps,
            memory,
            weight_bytes,
            result.artifacts.get("sparsity"),
            result.artifacts.get("encoding"),
        )
        outcome.lossy_couplings = lossy
        outcome.blocks = result.artifacts.get("blocks")
        if plan_out is not None:  # a plan-writing pass ran (checked before the passes)
            for path, payload in plan_files(result.artifacts, plan_out):
                stage.add_side_file(path, payload)
        if finish is not None:
            finish(model, outcome, stage, feeds)
        stage.commit()
    return outcome


def _lossy_couplings(model, result: PassResult, feeds: dict) -> dict | None:
    """When the cut went through lossy couplings: their nodes and the pruned model's difference
    from the plain masked original (``oracle.lossy_error``)."""
    ops, build = result.artifacts.get("lossy_couplings"), result.reference
    return lossy_error(model, build(plain=True), ops, feeds) if ops and build else None


def _shapes_hint(feeds: dict, label: str) -> str:
    """For random feeds, the shapes they had and how to give others."""
    if not label.startswith("random"):
        return ""
    shapes = ", ".join(
        f"{name} {'x'.join(map(str, getattr(a, 'shape', ()))) or 'scalar'}"
        for name, a in feeds.items()
    )
    return (
        f" (inputs: {label} at {shapes}; if the model needs other shapes or values, give "
        "--input-shape NAME:DxD... or --inputs FILE.npz)"
    )


def _validate(model, result: PassResult, source, feeds, label, *, rtol, atol, latency_runs):
    """Checker full check; the oracle when a pass was lossy (gated), else the original (gated);
    returns (oracle or None, validation against the original)."""
    problem = model.check()
    if problem is not None:
        raise ValidationError(
            f"the compressed model fails the ONNX checker (nothing written): {problem}"
        )
    oracle = None
    model.release_mapped_weights()  # the original's pages read by the passes leave the process
    if result.reference is not None:  # built per comparison, dropped once its session exists
        oracle = run_oracle(result.reference, model, feeds, label)
    if model.metadata(FORMAT_KEY) not in (None, "dense"):
        decoded = model.copy()  # the same weights decoded in numpy: the decoders are checked
        densify_weights(decoded)  # alone, the values by the oracle / the validation below
        problem = check_encoded(model, decoded, feeds, DECODER_PREFIX)
        if problem is not None:
            raise ValidationError(f"sparse-encoded model rejected (nothing written): {problem}")
    validation = validate(
        Path(source),
        model,
        feeds,
        inputs_label=label,
        rtol=rtol,
        atol=atol,
        latency_runs=latency_runs,
    )
    if oracle is None and not validation.passed and is_quantized(model):
        validation = _basic_level_gate(
            source, model, feeds, label, validation, rtol=rtol, atol=atol
        )
    if oracle is None and not validation.passed:
        raise ValidationError(failure_line(validation))
    return oracle, validation


def _basic_level_gate(
    source, model, feeds, label, extended: Validation, *, rtol, atol
) -> Validation:
    """A quantized model compared at onnxruntime's basic level (at the extended level
    DequantizeLinear+MatMul/Gemm becomes dynamic quantization of the activation, and the original
    itself differs from its exact run), keeping the extended level's latency figures."""
    gate = validate(
        Path(source),
        model,
        feeds,
        inputs_label=f"{label}, compared at onnxruntime's basic "
        "optimization level (a quantized graph)",
        rtol=rtol,
        atol=atol,
        latency_runs=0,
        optimization="basic",
    )
    gate.latency_ms_reference, gate.latency_ms_candidate = (
        extended.latency_ms_reference,
        extended.latency_ms_candidate,
    )
    return gate


def _pipeline(pipeline: str | Sequence[PassBase] | None, on_pass) -> Pipeline:
    if not pipeline:
        return default_pipeline(on_pass=on_pass)
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    return Pipeline(passes, fixed_point=True, on_pass=on_pass)


def channel_passes(
    ratio: float | Mapping[str, float] | str = 0.5,
    *,
    heads: float = -1.0,
    ffn: float = -1.0,
    importance: str | None = None,
    scope: str = "local",
    max_layer_ratio: float = 0.9,
    round_to: int = 1,
    exclude: Sequence[str] = (),
    seed: int = 0,
    plan: str | Path | None = None,
    calibration: str | Path | None = None,
    calibration_samples: int = 0,
    recover: bool = True,
    steps: int = 1,
    target_macs: float = 0.0,
    target_params: float = 0.0,
    lossy_couplings: bool | None = None,
    drop_blocks: float = 0.0,
    block_importance: str = "influence",
    jobs: int = 1,
    depth: bool = True,
    executor: str = "local",
    target_latency: float = 0.0,
) -> list[PassBase]:
    """What ``--channels`` / ``--heads`` / ``--ffn`` run: identity elimination and shape folding
    (so that Reshape targets computed from static shapes become constants surgery can rewrite),
    exporter idioms canonicalized (dynamo's SDPA Kᵀ, the legacy exporter's run-time expand,
    timm's packed qkv split into Q, K, V projections),
    ``channel-prune`` with these options
    (``heads``/``ffn`` -1: as ``ratio``; with ``calibration``, activation importance and the
    refit are available, see ``ChannelPrunePass``), then cleanup.

    ``ratio`` is one fraction for every group, or per-layer ratios ``{glob: ratio}`` (or their
    text, ``"layer4.*=0.7,*=0.3"``): each group takes the ratio of the most specific pattern
    matching a layer whose output channels it holds, groups no pattern matches are kept
    (``sparsec.pruning.layer_ratios``). ``importance`` None: activation with real calibration
    data, else l1 (as the CLI). ``lossy_couplings`` (None: on with ``calibration``) also prunes
    channels a node mixes, such as LRN's (not exact; the report gives the loss). ``drop_blocks``
    (> 0) first removes that many blocks, as ``block_passes`` says; the run's oracle reference
    is then the original with their branches zeroed and the channels masked. ``jobs``: worker
    processes measuring sensitivity for a target (the same result); ``executor``: where they
    run (``sparsec.executor``: ``local``, or Ray: ``ray`` or an address). ``depth`` (with a
    target): removable blocks compete with the channels and are dropped where cheaper in error.
    ``target_latency`` (> 0): in place of ``ratio``, the ratio whose pruned model's measured
    1-thread latency is at most that fraction of the original's (``pruning.latency_target``)."""
    if plan is not None and not Path(plan).is_file():
        raise InputError(
            f"plan file {plan} {'is a directory' if Path(plan).is_dir() else 'not found'}"
        )
    if plan is not None:
        read_plan(str(plan))  # a malformed plan is refused before any work
    per_layer = isinstance(ratio, (Mapping, str))
    prune = ChannelPrunePass(
        ratio=0.0 if per_layer else ratio,
        ratios=ratio if per_layer else "",
        importance=importance or default_importance(calibration),
        scope=scope,
        max_layer_ratio=max_layer_ratio,
        round_to=round_to,
        exclude="|".join(exclude),
        seed=seed,
        heads=heads,
        ffn=ffn,
        plan=str(Path(plan).resolve()) if plan is not None else "",
        calibration=calibration_spec(calibration),
        calibration_samples=calibration_samples,
        recover=recover,
        steps=steps,
        target_macs=target_macs,
        target_params=target_params,
        lossy_couplings=lossy_couplings,
        jobs=jobs,
        depth=depth,
        executor=executor,
        target_latency=target_latency,
    )
    prune.check_options()
    depth = (
        _drop_pass(drop_blocks, block_importance, seed, calibration, calibration_samples, recover)
        if drop_blocks
        else []
    )
    return [*canonical_passes(), *depth, prune, *after_cut_passes()]


def cleanup_with_calibration(
    calibration: str | Path, calibration_samples: int = 0
) -> list[PassBase]:
    """What ``--calibration`` alone runs: the default cleanup, whose ``dead-channels`` also
    removes the channels that are zero on every calibration sample (lossy in principle: the
    oracle gate checks the result against the original with those channels masked)."""
    dead = DeadChannelsPass(
        calibration=calibration_spec(calibration), calibration_samples=calibration_samples
    )
    return cleanup_passes(dead_channels=dead)


def block_passes(
    count: float,
    *,
    importance: str = "influence",
    seed: int = 0,
    calibration: str | Path | None = None,
    calibration_samples: int = 0,
    recover: bool = True,
) -> list[PassBase]:
    """What ``--drop-blocks`` runs alone: the canonical rewrites, ``drop-blocks`` (remove
    ``count`` blocks, an integer, or a fraction in (0, 1) of them, ranked by ``importance``:
    influence on ``calibration``, norm or random; with calibration and ``recover``, the layers
    after them are refit, see ``DropBlocksPass``), then cleanup."""
    depth = _drop_pass(count, importance, seed, calibration, calibration_samples, recover)
    return [*canonical_passes(), *depth, *after_cut_passes()]


def _drop_pass(count, importance, seed, calibration, samples, recover) -> list[PassBase]:
    drop = DropBlocksPass(
        count=count,
        importance=importance,
        seed=seed,
        calibration=calibration_spec(calibration),
        calibration_samples=samples,
        recover=recover,
    )
    drop.check_options()
    return [drop]


def sparsity_passes(
    *,
    nm: str = "",
    ratio: float = 0.0,
    block: str = "",
    scope: str = "local",
    embeddings: bool = False,
    score: str = "magnitude",
    calibration: str | Path | None = None,
    sparse_format: str = "dense",
    calibration_samples: int = 0,
    recover: bool = True,
    exclude: Sequence[str] = (),
    seed: int = 0,
) -> list[PassBase]:
    """What ``--nm`` / ``--sparsity`` run: ``weight-sparsity`` with these options (with
    ``calibration``, the masked layers are refit unless ``recover`` is False; weights matching
    an ``exclude`` glob stay dense), cleanup, and the encoding of ``sparse_format`` (none for
    ``dense``)."""
    prune = WeightSparsityPass(
        nm=nm,
        ratio=ratio,
        block=block,
        scope=scope,
        embeddings=embeddings,
        score=score,
        calibration=calibration_spec(calibration),
        calibration_samples=calibration_samples,
        recover=recover,
        exclude="|".join(exclude),
        seed=seed,
    )
    prune.check_options()
    return [prune, *cleanup_passes(), *encoding_passes(sparse_format, nm)]


def encoding_passes(sparse_format: str, nm: str = "") -> list[PassBase]:
    """``sparse-encode`` for ``sparse_format`` (none for ``dense``); ``nm`` needs the pattern."""
    if sparse_format == "dense":
        return []
    if sparse_format == "nm" and not nm:
        raise InputError("--sparse-format nm stores N:M positions: it needs --nm N:M")
    encode = SparseEncodePass(format=sparse_format, nm=nm)
    encode.check_options()
    return [encode]


def densify(source: str | Path, output: str | Path, *, force: bool = False) -> int:
    """Decode every sparse-encoded weight of ``source`` into a plain initializer, check the
    result (checker, bit-identical outputs), write ``output``; returns how many were decoded."""
    model = Model.load(source)
    model.check_destination(Path(output), force=force)
    if model.metadata(FORMAT_KEY) in (None, "dense"):
        raise InputError(f"{source} has no sparse-encoded weights (nothing to densify)")
    encoded = model.copy()
    count = densify_weights(model)
    DeadCodePass()(model)
    problem = model.check()
    if problem is not None:
        raise ValidationError(
            f"the densified model fails the ONNX checker (nothing written): {problem}"
        )
    feeds, _ = prepare_feeds(model)
    outputs = validate(encoded, model, feeds, latency_runs=0, rtol=0.0, atol=0.0)
    if not outputs.passed:
        raise ValidationError(
            "the densified model's outputs differ from the encoded model's (nothing written)"
        )
    model.save(output, force=force)
    return count


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _json_text(payload) -> str:
    return json.dumps(payload, indent=2) + "\n"


def check_destinations(model: Model, output: Path, extra: Sequence[Path], force: bool) -> None:
    """Refuse, before any work, outputs that would clobber the input or cannot be written
    (``extra``: the report and plan files)."""
    model.check_destination(output, force=force)
    taken = {output.resolve()}
    for path in extra:
        model.refuse_clobbering_sources(path, force=False, forceable=False)
        if path.resolve() in taken:
            raise InputError(f"{path} is given as two outputs (model, report or plan)")
        refuse_unwritable(path, streams=True)
        taken.add(path.resolve())


def failure_line(report: Validation, *, written: str = " (nothing written)") -> str:
    """One line saying which output failed ``report`` and why; ``written`` ends the first
    clause (a compress run says nothing was written, ``validate`` writes nothing anyway)."""
    return f"validation failed{written}: {report.failure_line()}"


def validate_files(
    reference: str | Path,
    candidate: str | Path,
    *,
    input_shapes: Sequence[str] = (),
    inputs: str | Path | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    latency_runs: int = 10,
) -> Validation:
    """Compare two model files on the same feeds (built from the reference's inputs)."""
    ref_model = Model.load(reference)
    cand_model = Model.load(
        candidate
    )  # same checks (exists, parses, checker) before running anything
    names = [[v.name for v in m.inputs] for m in (ref_model, cand_model)]
    if set(names[1]) - set(names[0]):
        raise InputError(
            f"{candidate} reads input(s) {', '.join(sorted(set(names[1]) - set(names[0])))} that "
            f"{reference} does not have (its inputs: {', '.join(names[0]) or 'none'})"
        )
    feeds, label = prepare_feeds(ref_model, input_shapes, inputs)
    return validate(
        Path(reference),
        Path(candidate),
        feeds,
        inputs_label=label,
        rtol=rtol,
        atol=atol,
        latency_runs=latency_runs,
    )
