"""The combination rules of a job's options, one function each, applied in order by
``JobSpec.check``: options that exclude each other, options that need another, and options
that would be silently ignored. Each takes a ``JobSpec`` (not imported: the spec imports
these rules) and raises one ``UsageError`` line naming what to change.
"""

from __future__ import annotations

from sparsec import executor
from sparsec.errors import UsageError
from sparsec.spec.options import (
    BLOCK_ONLY,
    CHANNEL_SCORES,
    OPTION_BY_NAME,
    RANDOM,
    RATIO_NAMES,
    SELECTION_NAMES,
    TARGET_NAMES,
    WEIGHT_SCORES,
)


def flags(spec, names: tuple[str, ...]) -> list[str]:
    """The flags among ``names`` that ``spec`` gives, in that order."""
    return [OPTION_BY_NAME[name].flag for name in names if spec.given(name)]


def required_paths(spec) -> None:
    for name in ("source", "output"):
        if not spec.given(name):
            raise UsageError(
                f"a job needs {name!r} (the model to {'read' if name == 'source' else 'write'})"
            )


def importance_fits(spec) -> None:
    """Channel rankings go with --channels, weight scores with --nm/--sparsity; calibration
    data goes with a pruning flag, or alone (the default cleanup then also removes channels
    that are zero on every calibration sample), not with --passes."""
    importance = spec.values.get("importance")
    if importance in WEIGHT_SCORES and not spec.weights:
        raise UsageError(f"--importance {importance} scores weights for --nm/--sparsity")
    if importance in CHANNEL_SCORES and spec.weights:
        raise UsageError(
            f"--importance {importance} ranks channels; weights use magnitude, wanda or sparsegpt"
        )
    if spec.given("calibration") and not spec.lossy and spec.given("passes"):
        raise UsageError(
            "--calibration goes with a pruning flag (--channels, --heads, --ffn, --drop-blocks, "
            "--plan-in, --nm, --sparsity) or alone (channels zero on every sample are removed); "
            "a --passes pipeline takes calibration as a pass option"
        )


def calibration_options(spec) -> None:
    if not spec.given("calibration"):
        for name, flag in (
            ("calibration_samples", "--calibration-samples"),
            ("no_recover", "--no-recover"),
            ("recover", "--recover"),
        ):
            if spec.given(name):
                raise UsageError(f"{flag} needs --calibration")
    if spec.get("steps") > 1 and not spec.channel_cut:
        raise UsageError("--steps needs --channels, --heads or --ffn")
    if spec.given("recover") and spec.get("no_recover"):
        raise UsageError("--recover chooses the recovery and --no-recover skips it: give one")


def no_ignored_selection(spec) -> None:
    """Refuse selection flags that would be ignored (a saved plan has its own rule)."""
    if spec.given("plan_in"):
        return
    if spec.given("lossy_couplings") and not spec.channel_cut:
        raise UsageError(
            "--lossy-couplings / --no-lossy-couplings say which groups channel pruning may cut: "
            "they need --channels, --heads, --ffn, a target or --plan-in"
        )
    if not spec.channel_cut and flags(spec, ("round_to", "max_layer_ratio")):
        raise UsageError(
            "--round-to and --max-layer-ratio shape channel pruning: they need --channels, "
            "--heads, --ffn or --target-macs/--target-params"
        )
    given = flags(spec, ("exclude", "importance", "importance_scope"))
    if given and not (spec.structured or spec.weights):
        raise UsageError(
            f"{given[0]} chooses what a pruning flag removes: it needs --channels, --heads, "
            "--ffn, --drop-blocks, a target, --nm or --sparsity"
        )
    random_channels = spec.structured and spec.values.get("importance") == RANDOM  # or blocks
    if spec.given("seed") and not (spec.values.get("calibration") == RANDOM or random_channels):
        raise UsageError(
            "--seed seeds --calibration random and --importance random of channel pruning"
        )


def block_options(spec) -> None:
    """influence / output / norm rank blocks: they need --drop-blocks, which prunes on its own or
    before --channels/--heads/--ffn (not with a target, a plan, --plan-out or --passes)."""
    importance = spec.values.get("importance")
    if importance in BLOCK_ONLY and not spec.given("drop_blocks"):
        raise UsageError(f"--importance {importance} ranks blocks: it needs --drop-blocks")
    if not spec.given("drop_blocks"):
        return
    if not spec.channel_cut:
        if importance in CHANNEL_SCORES and importance != RANDOM:
            raise UsageError(
                f"--importance {importance} ranks channels; --drop-blocks uses influence, output, "
                "norm or random"
            )
        ignored = flags(spec, ("exclude", "importance_scope"))
        if ignored:
            raise UsageError(f"{ignored[0]} shapes channel pruning; --drop-blocks ignores it")
    others = flags(spec, (*TARGET_NAMES, "plan_in", "passes"))
    if others:
        raise UsageError(
            f"--drop-blocks cannot be combined with {others[0]} (yet): combine it with "
            "--channels, --heads or --ffn, or run sparsec twice"
        )
    if spec.given("plan_out"):
        raise UsageError(
            "--plan-out records a channel cut; it cannot record dropped blocks: drop "
            "--drop-blocks, or --plan-out"
        )


def passes_text(spec) -> None:
    if "passes" in spec.values and not any(p.strip() for p in spec.values["passes"].split(",")):
        raise UsageError(
            "--passes '' names no pass: leave --passes out for the cleanup, or list passes from "
            "'sparsec passes'"
        )


def sparsity_options(spec) -> None:
    """--block, --sparse-format and --embeddings shape weight sparsity; one pattern per run."""
    if not spec.weights:
        if spec.given("block"):
            raise UsageError("--block needs --sparsity R")
        if spec.given("embeddings") or spec.get("sparse_format") != "dense":
            flag = "--embeddings" if spec.given("embeddings") else "--sparse-format"
            raise UsageError(f"{flag} needs --nm or --sparsity")
        return
    if spec.given("passes") or spec.structured or spec.given("plan_in"):
        raise UsageError(
            "--nm / --sparsity prune on their own: drop --passes, --channels, --heads, --ffn, "
            "--target-macs/--target-params and --plan-in (run sparsec twice to combine)"
        )
    if spec.given("nm") and (spec.given("sparsity") or spec.given("block")):
        raise UsageError("--nm and --sparsity/--block are different patterns: give one")


def exclusive_choices(spec) -> None:
    """A target replaces the per-kind ratios, --passes the channel flags, and a saved plan
    every flag that chooses what to prune."""
    ratios, targets = flags(spec, RATIO_NAMES), flags(spec, TARGET_NAMES)
    if len(targets) == 2:
        raise UsageError("give --target-macs or --target-params, not both")
    if "--target-latency" in ratios and len(ratios) > 1:
        raise UsageError(
            "--target-latency chooses the --channels ratio: drop --channels, --heads and --ffn"
        )
    if targets and ratios:
        raise UsageError(
            "--target-macs/--target-params choose every group's ratio: drop --channels, --heads "
            "and --ffn"
        )
    if (targets or ratios or spec.given("plan_in")) and spec.given("passes"):
        raise UsageError("--passes cannot be combined with --channels, --heads, --ffn or --plan-in")
    if spec.given("jobs") and spec.get("jobs") > 1 and not targets:
        raise UsageError(
            "--jobs measures a --target-macs/--target-params sweep in worker processes: it needs a target"
        )
    if spec.given("depth") and not targets:
        raise UsageError(
            "--depth / --no-depth say whether a target may drop blocks: they need --target-macs "
            "or --target-params (--drop-blocks N drops blocks without one)"
        )
    if spec.values.get("depth") and spec.given("plan_out"):
        raise UsageError(
            "--plan-out records a channel cut; it cannot record dropped blocks: drop --depth "
            "(with --plan-out a target allocates channels only)"
        )
    selection = flags(spec, SELECTION_NAMES)
    if spec.given("plan_in") and selection:
        raise UsageError(f"--plan-in applies a saved plan; drop {', '.join(selection)}")


def quality_options(spec) -> None:
    """--labels reads --eval's file; a latency gate needs timed runs."""
    if spec.given("labels") and not spec.given("eval"):
        raise UsageError("--labels names the labels array of --eval DATA.npz: give --eval")
    if spec.given("max_latency_ratio") and spec.get("latency_runs") == 0:
        raise UsageError("--max-latency-ratio times both models: drop --latency-runs 0")
    for name in ("markdown", "junit"):
        if spec.values.get(name) == "-":
            raise UsageError(f"--{name} writes a file ('-' prints only --report)")


def executor_options(spec) -> None:
    """A Ray executor runs a target's sweep, and needs Ray installed (checked before any work)."""
    if not spec.given("executor") or not executor.parse(spec.get("executor")).remote:
        return
    if not flags(spec, TARGET_NAMES):
        raise UsageError(
            "--executor runs a --target-macs/--target-params sweep on Ray: it needs a target"
        )
    executor.require_ray()


RULES = (
    required_paths,
    importance_fits,
    calibration_options,
    no_ignored_selection,
    passes_text,
    sparsity_options,
    exclusive_choices,
    quality_options,
    block_options,
    executor_options,
)
