"""The options of a compression job as data: name, kind (how a value is read and checked),
default, help group and help line.

A name is a recipe key; its flag is ``--`` + the name with dashes. The CLI builds its flags from
``OPTIONS`` and the recipe reader checks its keys with it, so a flag and a recipe key accept the
same values and fail with the same line (``Option.convert``: a ``UsageError`` naming the flag).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sparsec import executor
from sparsec.errors import UsageError
from sparsec.pruning import layer_ratios

CHANNEL_SCORES = ("l1", "l2", "bn-scale", "random", "activation")
WEIGHT_SCORES = ("magnitude", "wanda", "sparsegpt")
BLOCK_SCORES = ("influence", "output", "norm", "random")  # --drop-blocks
BLOCK_ONLY = BLOCK_SCORES[:3]  # the scores that rank blocks only (random ranks channels too)
RANDOM = "random"


@dataclass(frozen=True)
class Kind:
    """How an option's value is read: ``convert`` turns a flag's text or a recipe's value into
    the value, or raises ``ValueError`` saying what is expected."""

    metavar: str
    convert: Callable[[Any], Any]
    flag: bool = False  # an on/off switch (no value on the command line)
    many: bool = False  # repeatable (a list in a recipe)
    pair: bool = False  # --name / --no-name: off is given too (left out: None, a default rule)


def _number(
    low: float | None, high: float | None, *, low_open=False, high_open=False, integer=False
):
    """A converter to a number in the interval, e.g. [0, 1) for ``0, 1, high_open=True``."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    where = f"in {left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
    what = "an integer" if integer else "a number"

    def convert(value):
        if isinstance(value, bool) or (
            integer and isinstance(value, float) and not value.is_integer()
        ):
            raise ValueError(f"expected {what} {where}, got {value!r}")
        try:
            number = float(value)
            if integer:
                if not number.is_integer():
                    raise ValueError
                number = int(number)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"expected {what} {where}, got {value!r}") from None
        if (
            not math.isfinite(number)
            or (low is not None and (number < low or (low_open and number == low)))
            or (high is not None and (number > high or (high_open and number == high)))
        ):
            raise ValueError(f"expected {what} {where}, got {value!r}")
        return number

    return convert


def _choice(*values: str):
    def convert(value):
        if value not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {value!r}")
        return value

    return convert


def _text(value):
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value


def _path(value):
    """A file path; one ending in '/' names a folder and is refused (it would become a file of
    the folder's name)."""
    text = _text(value)
    if text.endswith(("/", "\\")) and text.strip("/\\"):
        raise ValueError(
            f"{text!r} names a folder (it ends with '/'); give a file path, e.g. {text}model.onnx"
        )
    return text


def _executor(value):
    """Executor text (``sparsec.executor``), kept as given: a recipe writes it back."""
    executor.parse(value)
    return value


def _switch(value):
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


RATIO = Kind("R", _number(0, 1, high_open=True))


def _ratios(value):
    """One ratio (a number, or its text), or per-layer ratios: ``GLOB=R,...`` text or a table."""
    if isinstance(value, str) and "=" not in value:
        try:
            return RATIO.convert(value)
        except ValueError as error:
            raise ValueError(f"{error} (or GLOB=R pairs, e.g. 'layer4.*=0.7,*=0.3')") from None
    if isinstance(value, (int, float, bool)):
        return RATIO.convert(value)
    return layer_ratios.parse(value)


LAYER_RATIOS = Kind("R|GLOB=R,...", _ratios)
OPEN_RATIO = Kind("R", _number(0, 1, low_open=True, high_open=True))
POSITIVE_RATIO = Kind("R", _number(0, None, low_open=True))
COUNT = Kind("N", _number(1, None, integer=True))


def _round_to(value):
    """An integer >= 1, or ``auto``: the runtime's measured fast widths (channel-prune's
    ``round_to=0``)."""
    if value == "auto":
        return value
    try:
        return int(COUNT.convert(value))
    except ValueError:
        raise ValueError(f"expected an integer >= 1 or 'auto', got {value!r}") from None


def _block_count(value):
    """An integer >= 1 (blocks) or a fraction in (0, 1) (of the blocks)."""
    number = _number(0, None, low_open=True)(value)
    if number >= 1 and not float(number).is_integer():
        raise ValueError(f"expected an integer >= 1 or a fraction in (0, 1), got {value!r}")
    return int(number) if number >= 1 else number


BLOCK_COUNT = Kind("N|F", _block_count)
PATH = Kind("FILE", _path)
TEXT = Kind("TEXT", _text)
SWITCH = Kind("", _switch, flag=True)
ON_OFF = Kind("", _switch, pair=True)


@dataclass(frozen=True)
class Option:
    """One option of a job: ``name`` is the recipe key and the flag ``--name-with-dashes``."""

    name: str
    kind: Kind
    group: str
    help: str
    default: Any = None  # what an option left out means (shown in --help)
    metavar: str = ""
    path: bool = False  # a file path (relative to the recipe's folder in a recipe)
    recipe: bool = True  # a recipe key (--save-recipe is a command-line action only)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value):
        """The checked value; ``UsageError`` naming the flag when it is not acceptable."""
        try:
            if self.kind.many:
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, (list, tuple)):
                    raise ValueError(f"expected a list of text, got {value!r}")
                return tuple(self.kind.convert(item) for item in items)
            return self.kind.convert(value)
        except ValueError as error:
            raise UsageError(f"{self.flag}: {error}") from None


OUTPUT, PRUNE, SPARSITY, CHOICE, DATA, GATES, REPORTS, VALIDATION = (
    "Output",
    "What to prune (structured)",
    "What to prune (weight sparsity)",
    "How units are chosen",
    "Calibration and recovery",
    "Quality gates (exit 1 when one is missed; nothing written)",
    "Reports",
    "Validation",
)


IMPORTANCE = Kind("SCORE", _choice(*CHANNEL_SCORES, *WEIGHT_SCORES, *BLOCK_ONLY))

OPTIONS: tuple[Option, ...] = (
    Option("source", PATH, OUTPUT, "The model to compress (the MODEL argument).", path=True),
    Option("output", PATH, OUTPUT, "Where to write the compressed model.", path=True),
    Option("force", SWITCH, OUTPUT, "Allow --output to overwrite the input model.", False),
    Option(
        "plan_out",
        PATH,
        OUTPUT,
        "Write the kept indices per initializer and axis (to prune the source model the same way).",
        metavar="FILE.json",
        path=True,
    ),
    Option(
        "save_recipe",
        PATH,
        OUTPUT,
        "Write this command line as a recipe (a [[job]] for 'sparsec run'), paths relative to it.",
        metavar="FILE.toml",
        path=True,
        recipe=False,
    ),
    Option(
        "channels",
        LAYER_RATIOS,
        PRUNE,
        "Remove fraction R of the channels of every prunable channel group (then clean up); or "
        "per layer, 'GLOB=R,...' (e.g. 'layer4.*=0.7,*=0.3'): a group takes the ratio of the most "
        "specific pattern matching a layer whose output channels it holds (node, weight, scope or "
        "module name; ties: the smaller ratio); groups no pattern matches are kept.",
    ),
    Option(
        "heads",
        RATIO,
        PRUNE,
        "Remove fraction R of the attention heads of every block (a KV head goes with all the query "
        "heads sharing it); overrides --channels for head groups.",
    ),
    Option(
        "ffn",
        RATIO,
        PRUNE,
        "Remove fraction R of the hidden units of every MLP (between two Gemm/MatMul layers); "
        "overrides --channels for those groups.",
    ),
    Option(
        "drop_blocks",
        BLOCK_COUNT,
        PRUNE,
        "Depth pruning: remove the N least important blocks (residual blocks, attention / MLP "
        "sub-blocks, plain layers; a whole transformer layer counts as two), or fraction F of "
        "them, e.g. '--drop-blocks 2 --calibration data.npz' (importance: --importance "
        "influence/output/norm/random). Runs before --channels/--heads when combined.",
    ),
    Option(
        "target_macs",
        OPEN_RATIO,
        PRUNE,
        "Instead of one ratio: measure each group's sensitivity on --calibration and prune each "
        "group by the ratio (0.1..0.8) that reaches R x the original MACs with the least estimated "
        "error.",
    ),
    Option("target_params", OPEN_RATIO, PRUNE, "As --target-macs, for the parameter count."),
    Option(
        "target_latency",
        Kind("R", _number(0, 1, low_open=True)),
        PRUNE,
        "Instead of --channels: the channel ratio whose pruned model runs in at most R x the "
        "original's measured latency (onnxruntime, 1 thread; found by bisection, each probe "
        "timed interleaved with the original; the report gives the figures and noise).",
    ),
    Option(
        "depth",
        ON_OFF,
        PRUNE,
        "With --target-macs/--target-params: let the model's removable blocks (analyze --blocks) "
        "compete with the channels, each measured removed alone on --calibration, so a block "
        "is dropped where that costs less output error than width (--no-depth: channels only; "
        "off with --plan-out, which records channels only).",
        default=True,
    ),
    Option(
        "lossy_couplings",
        ON_OFF,
        PRUNE,
        "Also prune channel groups that a node mixes across (LRN's window over neighbouring "
        "channels), which otherwise stay whole. Not exact: the kept channels' values change. The "
        "oracle then runs those nodes on the kept channels only, and the report gives the "
        "difference from the plain masked original (the loss the coupling caused). Default: on "
        "with --calibration (the refit compensates), else off.",
    ),
    Option(
        "plan_in",
        PATH,
        PRUNE,
        "Apply a plan written by --plan-out instead of choosing channels.",
        metavar="FILE.json",
        path=True,
    ),
    Option(
        "passes",
        TEXT,
        PRUNE,
        "Passes to run instead of the default cleanup, e.g. 'identity-elimination,dead-code' or "
        "'my_passes.py:MyPass(threshold=0.1, conv=\"/pw/Conv\")' (values are TOML values or bare "
        "words). They run to a fixed point: repeated until none changes the model (at most 8 "
        "rounds; a lossy pass runs once). See `sparsec passes --describe`.",
        metavar="PIPELINE",
    ),
    Option(
        "nm",
        TEXT,
        SPARSITY,
        "Zero all but the N largest of every M consecutive weights along each weight's reduction "
        "axis (e.g. 2:4); zeros stay in the dense file.",
        metavar="N:M",
    ),
    Option(
        "sparsity",
        OPEN_RATIO,
        SPARSITY,
        "Zero fraction R of the weights of Conv/Gemm/MatMul (unstructured, or whole blocks with "
        "--block).",
    ),
    Option(
        "block",
        TEXT,
        SPARSITY,
        "With --sparsity: zero whole RxC blocks of each weight seen as [rows, reduction axis], "
        "e.g. 1x8, 4x4.",
        metavar="RxC",
    ),
    Option(
        "embeddings",
        SWITCH,
        SPARSITY,
        "With --nm/--sparsity: also sparsify embedding tables (float initializers read by Gather), "
        "N:M along each gathered row; left dense by default.",
        False,
    ),
    Option(
        "sparse_format",
        Kind("FORMAT", _choice("dense", "bitmask", "nm", "coo")),
        SPARSITY,
        "With --nm/--sparsity: dense keeps the zeros (runs everywhere); bitmask stores kept values "
        "+ one bit per weight, nm (with --nm) kept values + their positions in each run of M; both "
        "decode in a subgraph onnxruntime folds at session creation (checked bit-identical); coo "
        "writes ONNX sparse_initializer (onnxruntime only; smaller only above ~67 percent "
        "sparsity).",
        "dense",
    ),
    Option(
        "importance",
        IMPORTANCE,
        CHOICE,
        "Channels (--channels/--heads/--ffn): l1 / l2 norm of all their weight slices, BatchNorm "
        "|gamma|, seeded random, or activation (‖x‖·‖w‖ at the layers reading them, needs "
        "--calibration). Weights (--nm/--sparsity): magnitude, wanda (|w|·‖x‖, needs "
        "--calibration), or sparsegpt (--nm with --calibration: each layer's mask chosen again in "
        "the refit from its inputs' Gram matrix). Blocks (--drop-blocks): influence (1 - cos "
        "between a block's input and output on --calibration), output (the output error of "
        "removing it alone, on --calibration), norm (no data: the gain of the block's last "
        "weight) or random. Default: activation / wanda / influence with real "
        "--calibration data, else l1 / magnitude (blocks: refused without data).",
    ),
    Option(
        "importance_scope",
        Kind("SCOPE", _choice("local", "global")),
        CHOICE,
        "local: every group loses the same fraction; global: rank channels of all groups together.",
        "local",
    ),
    Option(
        "max_layer_ratio",
        Kind("R", _number(0, 1, low_open=True)),
        CHOICE,
        "The most any one group may lose, in both scopes (so --channels above it is capped).",
        0.9,
    ),
    Option(
        "round_to",
        Kind("K|auto", _round_to),
        CHOICE,
        "Keep channel counts at multiples of K (e.g. 8 or 16 for fast kernels) where the group "
        "allows; auto: per layer, the count near the ratio's that onnxruntime runs fastest per "
        "channel (each candidate width timed on one thread).",
        1,
        metavar="K|auto",
    ),
    Option(
        "exclude",
        Kind("GLOB", _text, many=True),
        CHOICE,
        "Never prune a channel group, or (with --nm/--sparsity) a weight, touching a node or "
        "initializer whose name matches GLOB (repeatable).",
        (),
    ),
    Option(
        "steps",
        COUNT,
        CHOICE,
        "With --channels/--heads/--ffn: reach the ratios in K prune -> refit rounds, each on the "
        "model the last one left (the report lists the error after each round).",
        1,
        metavar="K",
    ),
    Option(
        "seed",
        Kind("N", _number(0, None, integer=True)),
        CHOICE,
        "Seed of --importance random and --calibration random.",
        0,
    ),
    Option(
        "calibration",
        Kind("DATA", _text),
        DATA,
        "Calibration samples: a .npz (arrays keyed by input name, first axis = samples), a folder "
        "of .npz and NAME.npy files, or 'random' (seeded random inputs, warned). Read by "
        "--importance activation/wanda, and turns on the least-squares refit of the pruned layers "
        "(see --no-recover).",
        path=True,
    ),
    Option(
        "calibration_samples",
        COUNT,
        DATA,
        "Use the first N calibration samples (default: all; 64 with 'random').",
    ),
    Option(
        "jobs",
        COUNT,
        DATA,
        "With --target-macs/--target-params: measure the channel groups' sensitivity in N worker "
        "processes (each holds one copy of the model; the result is the same).",
        1,
    ),
    Option(
        "executor",
        Kind("WHERE", _executor),
        DATA,
        f"With --target-macs/--target-params: where the sweep runs: {executor.WHERE_TEXT}.",
        executor.LOCAL,
    ),
    Option(
        "no_recover",
        SWITCH,
        DATA,
        "With --calibration: skip the refit (ridge least squares of each pruned layer against the "
        "original's outputs, bias compensation included, zeros kept).",
        False,
    ),
    Option(
        "recover",
        Kind("MODE", _choice("layer", "block")),
        DATA,
        "With --calibration: layer (the least-squares refit of each pruned layer) or block (then "
        "the kept weights of each block between residual joins fitted by gradient descent to the "
        "original's block outputs; needs the torch extra: pip install 'sparsec[reconstruct]'). "
        "Default: layer (block does not yet beat it everywhere, and is kept only when it lowers "
        "the model's calibration error).",
    ),
    Option(
        "eval",
        PATH,
        GATES,
        "Evaluate on these samples (.npz: arrays keyed by input name, axis 0 = samples, and an "
        "optional 'labels' array): per output, top-1 accuracy before/after against the labels, "
        "top-1 agreement with the original, mean cosine, max error.",
        metavar="DATA.npz",
        path=True,
    ),
    Option(
        "labels",
        TEXT,
        GATES,
        "With --eval: the array holding the labels (default: 'labels' or 'label').",
        metavar="KEY",
    ),
    Option(
        "max_top1_drop",
        Kind("PTS", _number(0, 100)),
        GATES,
        "Fail when top-1 drops by more than PTS percentage points: accuracy against the --eval "
        "labels, else agreement with the original (on --eval, --calibration or random samples).",
    ),
    Option(
        "min_cosine",
        Kind("C", _number(-1, 1)),
        GATES,
        "Fail when the mean cosine of an output with the original's is below C.",
    ),
    Option("max_params_ratio", POSITIVE_RATIO, GATES, "Fail when params after / before exceeds R."),
    Option("max_macs_ratio", POSITIVE_RATIO, GATES, "Fail when MACs after / before exceeds R."),
    Option(
        "max_bytes",
        Kind("N", _number(1, None, integer=True)),
        GATES,
        "Fail when the output (model + external data) exceeds N bytes.",
    ),
    Option(
        "max_latency_ratio",
        POSITIVE_RATIO,
        GATES,
        "Fail when the median latency after / before exceeds R (both models timed in interleaved "
        "rounds, --latency-runs each, at least 20; the noise estimate is reported).",
    ),
    Option(
        "report",
        PATH,
        REPORTS,
        "Write the JSON report (figures, gates, verdict, sha256s), also when the run fails; '-' "
        "prints it on stdout.",
        metavar="FILE.json",
        path=True,
    ),
    Option(
        "markdown",
        PATH,
        REPORTS,
        "Write a Markdown summary (before/after, gates, per-op changes); with "
        "$GITHUB_STEP_SUMMARY set it is also appended there.",
        metavar="FILE.md",
        path=True,
    ),
    Option(
        "junit",
        PATH,
        REPORTS,
        "Write JUnit XML: one test case per job and per gate.",
        metavar="FILE.xml",
        path=True,
    ),
    Option(
        "input_shape",
        Kind("NAME:DxD...", _text, many=True),
        VALIDATION,
        "Fix an input's dims, e.g. input:1x3x224x224 (repeatable). Symbolic dims otherwise "
        "default to 1 for the batch axis and 128 elsewhere.",
        (),
    ),
    Option(
        "inputs",
        PATH,
        VALIDATION,
        "Validate on these arrays (keyed by input name) instead of seeded random inputs.",
        metavar="FILE.npz",
        path=True,
    ),
    Option(
        "rtol",
        Kind("X", _number(0, None)),
        VALIDATION,
        "Relative tolerance of the check |cand - ref| <= atol + rtol*|ref| per element (of a "
        "lossless run; a pruned one is checked against its masked original).",
        1e-4,
    ),
    Option(
        "atol",
        Kind("X", _number(0, None)),
        VALIDATION,
        "Absolute tolerance of the same check.",
        1e-5,
    ),
    Option(
        "latency_runs",
        Kind("N", _number(0, None, integer=True)),
        VALIDATION,
        "Timed runs per model for the median latency (0 skips timing).",
        10,
    ),
)

OPTION_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
GATE_NAMES = tuple(o.name for o in OPTIONS if o.group == GATES and o.name[:4] in ("max_", "min_"))
RATIO_NAMES = ("channels", "heads", "ffn", "target_latency")  # target_latency: searches the ratio
TARGET_NAMES = ("target_macs", "target_params")
# The options that choose what a pruning run removes (a saved plan replaces them all).
SELECTION_NAMES = (
    *RATIO_NAMES,
    "importance",
    "importance_scope",
    "max_layer_ratio",
    "round_to",
    "seed",
    "exclude",
)


def default_importance(calibration: Any, *, weights: bool = False) -> str:
    """The score a run uses when none is given: activation (wanda for weights) with real
    calibration data, else l1 (magnitude); one rule for the CLI, recipes and ``api``."""
    real = calibration is not None and str(calibration) not in ("", RANDOM)
    if weights:
        return "wanda" if real else "magnitude"
    return "activation" if real else "l1"


def is_given(value: Any, option: Option | None = None) -> bool:
    """Whether an option's value says it was given: not None, not an off switch (but the off
    side of an ``option`` with a --no- form is), not an empty list (0 is a given number:
    ``0 == False`` must not drop ``--max-top1-drop 0``)."""
    if option is not None and option.kind.pair:
        return value is not None
    return value is not None and value is not False and value != ()
