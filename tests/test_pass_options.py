"""Pass options: the ``--passes`` text syntax (TOML inline values, bare words, one-line errors),
its format → parse round trip, values converted to the annotated types, options described
from the pass class (``sparsec passes --describe``), every built-in option documented, and a
recipe whose ``passes`` string quotes its values, run end to end."""

from __future__ import annotations

import inspect
import json
import math
import re
import shlex
from typing import ClassVar, Literal

import onnx
import pytest
from conftest import MODELS, ROOT
from hypothesis import given
from hypothesis import strategies as st

from sparsec.errors import InputError
from sparsec.passes import registry
from sparsec.passes.base import InPlacePass, PassResult
from sparsec.passes.builtin import BUILTIN_PASSES
from sparsec.passes.options import docstring_args, options_of
from sparsec.passes.syntax import format_pass, format_value, parse_pipeline_text, parse_value


class OptionsPass(InPlacePass):
    """A pass with one option of each kind the syntax writes."""

    name: ClassVar[str] = "options-pass"
    summary: ClassVar[str] = "Options of every kind."

    def __init__(
        self,
        text: str = "",
        count: int = 0,
        scale: float = 1.0,
        flag: bool = False,
        names: tuple[str, ...] = (),
        sizes: list[int] | None = None,
        mode: Literal["fast", "exact"] = "fast",
    ) -> None:
        """Options of ``options-pass``.

        Args:
            text: Any text.
            count (int): A count,
                continued on a second line.
            scale: A factor.
            flag: A switch.
            names: Some names.
            sizes: Some sizes.
            mode: ``fast`` or ``exact``.
        """
        self.text, self.count, self.scale, self.flag = text, count, scale, flag
        self.names, self.sizes, self.mode = names, sizes, mode

    def call(self, model) -> PassResult:
        return PassResult(model, modified=False)


@pytest.fixture
def options_pass(monkeypatch):
    """``options-pass`` registered in a registry of the test's own."""
    registry.available()  # built-ins loaded first: loading is once, into the registry of the day
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(OptionsPass)
    return OptionsPass


def _values(text: str) -> dict:
    [spec] = parse_pipeline_text(text)
    return {key: value.value for key, value in spec.options.items()}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('p(conv="/pw/Conv")', {"conv": "/pw/Conv"}),
        ("p(conv='/pw/Conv')", {"conv": "/pw/Conv"}),
        ('p(a="x,y(z)[1]",b=2)', {"a": "x,y(z)[1]", "b": 2}),
        ('p(a="say \\"hi\\"")', {"a": 'say "hi"'}),
        ("p(a=[1, 2],b=['x,y', \"z\"])", {"a": [1, 2], "b": ["x,y", "z"]}),
        ("p(a=true,b=FALSE,c=1e-3,d=-7,e=1_000,f=inf)", {"a": True, "b": "FALSE", "c": 0.001,
                                                        "d": -7, "e": 1000, "f": math.inf}),
        ("p(importance=l2,nm=2:4,exclude=conv1*|fc,plan=a/b.json)",
         {"importance": "l2", "nm": "2:4", "exclude": "conv1*|fc", "plan": "a/b.json"}),
        ("p( a = 1 , b = x y )", {"a": 1, "b": "x y"}),
        ("p(a=1#2,b=1979-05-27,c=)", {"a": "1#2", "b": "1979-05-27", "c": ""}),
        ("p(t={k = 1, \"x y\" = [2]})", {"t": {"k": 1, "x y": [2]}}),
    ],
)  # fmt: skip
def test_option_values_read_as_toml_or_bare_words(text, expected):
    assert _values(text) == expected


def test_pipeline_splits_at_top_level_commas_only():
    specs = parse_pipeline_text(' a , b(x="1,2",y=[3,4]) ,, my.py:Cls(z=(1)) ')
    assert [(s.name, s.position) for s in specs] == [("a", 2), ("b", 6), ("my.py:Cls", 28)]
    assert specs[2].options["z"].value == "(1)"  # a bare word: parentheses balance


@pytest.mark.parametrize(
    "text, message",
    [
        ('cp(exclude="a,b)', r"unterminated quote \(\"\) opened at character 12"),
        ("cp(exclude='a,b)", r"unterminated quote \('\) opened at character 12"),
        ("cp(sizes=[1,2)", r"unexpected '\)'; expected '\]' at character 14"),
        ("cp(sizes=[1,2", r"unclosed '\[' opened at character 10"),
        ("a,b)", r"unexpected '\)' at character 4"),
        ("cp(names=[a, b])", r"option names: \[a, b\] is not a TOML value .*need quotes"),
        ("cp(x=1,x=2)", "option x given twice at character 8"),
        ("cp(x=1) extra", r"unexpected text after '\)' of pass 'cp' at character 8"),
        ("cp(x)", "option 'x' needs key=value at character 4"),
        ("cp(1x=2)", "'1x' is not an option name"),
        ("(x=1)", "options without a pass name at character 1"),
    ],
)
def test_bad_text_is_one_line_naming_the_character(text, message):
    with pytest.raises(InputError, match=message) as error:
        parse_pipeline_text(text)
    assert "\n" not in str(error.value) and str(error.value).startswith(f"pipeline '{text}': ")


# Values the syntax writes: scalars, strings full of syntax characters, and nested lists.
_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from(list(",()[]{}'\"=\\#| \n")),
    max_size=12,
)
_SCALARS = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _TEXT
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=8)


def _same(a, b) -> bool:
    """Equal, with the same types all the way down (True is not 1, 1.0 is not 1)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@given(_VALUES)
def test_format_then_parse_gives_the_same_value(value):
    assert _same(parse_value(format_value(value)).value, value)


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), _VALUES))
def test_format_pass_then_parse_gives_the_same_options(options):
    [spec] = parse_pipeline_text(format_pass("some-pass", options))
    assert spec.name == "some-pass"
    assert _same(
        [spec.options[k].value for k in options] if options else [], list(options.values())
    )


def test_nan_round_trips():
    assert math.isnan(parse_value(format_value(math.nan)).value)


@pytest.mark.usefixtures("options_pass")
@given(
    text=_TEXT,
    count=st.integers(-(2**40), 2**40),
    scale=st.floats(allow_nan=False),
    flag=st.booleans(),
    names=st.lists(_TEXT, max_size=3).map(tuple),
    sizes=st.none() | st.lists(st.integers(0, 99), max_size=3),
    mode=st.sampled_from(["fast", "exact"]),
)
def test_a_pass_formatted_parses_back_into_the_same_pass(**options):
    created = registry.create("options-pass", options)
    shown = {k: v for k, v in created.options().items() if v is not None}
    [again] = registry.parse_pipeline(format_pass(created.name, shown))
    assert type(again) is OptionsPass
    for key, value in created.options().items():
        assert (
            _same(list(getattr(again, key) or []), list(value or []))
            if key
            in (
                "names",
                "sizes",
            )
            else _same(getattr(again, key), value)
        )
    assert type(again.names) is tuple


def test_describe_round_trips_a_string_with_a_comma(options_pass):
    created = options_pass(text="a,b", names=("x y", "z"))
    [again] = registry.parse_pipeline(created.describe())
    assert again.options() == created.options()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("options-pass(scale=2)", {"scale": 2.0}),  # an int for a float option
        ("options-pass(count=1e3)", {"count": 1000}),  # an integral float for an int option
        ("options-pass(text=0)", {"text": "0"}),  # a bare word stays text for a str option
        ("options-pass(text=true)", {"text": "true"}),
        ('options-pass(text="0")', {"text": "0"}),
        ("options-pass(names=a|b)", {"names": ("a", "b")}),  # the older list form
        ("options-pass(names=a)", {"names": ("a",)}),
        ('options-pass(names=["a|b", "c"])', {"names": ("a|b", "c")}),
        ("options-pass(sizes=[1, 2])", {"sizes": [1, 2]}),
        ("options-pass(sizes=1|2)", {"sizes": [1, 2]}),
        ("options-pass(mode=exact)", {"mode": "exact"}),
        ("options-pass(flag=True)", {"flag": True}),  # the older parser's spelling
        ("options-pass(text=True)", {"text": "True"}),
        ("options-pass(scale=.5,count=010)", {"scale": 0.5, "count": 10}),
    ],
)
@pytest.mark.usefixtures("options_pass")
def test_values_convert_to_the_annotated_type(text, expected):
    [created] = registry.parse_pipeline(text)
    for key, value in expected.items():
        assert _same(getattr(created, key), value) or getattr(created, key) == value
        assert type(getattr(created, key)) is type(value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("options-pass(count=2.5)", r"option count=2.5: expected int \(like 0\)"),
        ("options-pass(count=true)", "option count=true: expected int"),
        ('options-pass(scale="2")', r"option scale=\"2\": expected float \(like 1.0\)"),
        ("options-pass(flag=1)", "option flag=1: expected bool"),
        ("options-pass(mode=slow)", "option mode=slow: expected Literal"),
        ('options-pass(sizes=["a"])', "option sizes=.*expected list"),
        ("options-pass(txt=1)", r"has no option txt \(did you mean text\?\)"),
        ("option-pass", "unknown pass 'option-pass'; did you mean 'options-pass'"),
    ],
)
@pytest.mark.usefixtures("options_pass")
def test_values_that_do_not_fit_are_one_line_errors(text, message):
    with pytest.raises(InputError, match=message):
        registry.parse_pipeline(text)


@pytest.mark.usefixtures("options_pass")
def test_create_converts_python_values_the_same_way():
    created = registry.create("options-pass", {"scale": 3, "names": ["a"], "count": 4.0})
    assert (created.scale, created.names, created.count) == (3.0, ("a",), 4)
    with pytest.raises(InputError, match="option text=1: expected str"):
        registry.create("options-pass", {"text": 1})


def test_docstring_args_reads_google_style_sections():
    doc = """Summary.

    Args:
        first: One line.
        second (int): Two
            lines.

        **extra: Keywords.

    Returns:
        Nothing.
    """
    assert docstring_args(doc) == {
        "first": "One line.",
        "second": "Two lines.",
        "extra": "Keywords.",
    }
    assert docstring_args("No sections.") == {} and docstring_args(None) == {}


def test_describe_reads_the_pass_class(options_pass):
    import sparsec.passes

    info = sparsec.passes.describe("options-pass")
    parameters = inspect.signature(OptionsPass.__init__).parameters
    assert [o.name for o in info.options] == [p for p in parameters if p != "self"]
    assert [o.default for o in info.options] == [
        p.default for name, p in parameters.items() if name != "self"
    ]
    assert info.option("count").help == "A count, continued on a second line."
    assert info.option("names").type == "tuple[str, ...]"
    assert info.option("sizes").default_text == "" or info.option("sizes").default is None


@pytest.mark.parametrize("cls", BUILTIN_PASSES, ids=lambda cls: cls.name)
def test_every_builtin_option_is_documented(cls):
    undocumented = [option.name for option in options_of(cls) if not option.help]
    assert not undocumented, f"{cls.name}: add these to __init__'s Args: section: {undocumented}"


def test_describe_cli_shows_the_signature(cli):
    code, out, err = cli("passes", "--describe", "const-fold-shapes")
    parameter = inspect.signature(registry.find_class("const-fold-shapes").__init__).parameters
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0] == f"const-fold-shapes: {registry.summaries()['const-fold-shapes']}"
    assert lines[2] == f"  max_elements: int = {parameter['max_elements'].default}"
    assert lines[3].startswith("      The largest integer tensor")


def test_describe_cli_json_and_every_pass(cli):
    code, out, _ = cli("passes", "--describe", "--json")
    described = json.loads(out)
    assert code == 0 and [p["name"] for p in described] == list(registry.summaries())
    [prune] = [p for p in described if p["name"] == "channel-prune"]
    ratio = prune["options"][0]
    assert (ratio["name"], ratio["type"], ratio["default"], ratio["required"]) == (
        "ratio",
        "float",
        0.5,
        False,
    )


def test_describe_cli_unknown_name_is_one_line_with_a_suggestion(cli):
    code, out, err = cli("passes", "--describe", "chanel-prune")
    assert code == 2 and not out
    assert err.count("\n") == 1 and "did you mean 'channel-prune'?" in err


def test_describe_cli_a_pass_file(cli):
    code, out, _ = cli(
        "passes", f"{ROOT / 'passes' / 'drop_tiny_channels.py'}:DropTinyChannelsPass"
    )
    assert code == 0 and out.startswith("drop-tiny-channels: ")
    assert "  threshold: float = 0.001" in out.splitlines()


def test_recipe_passes_string_with_quoted_values_runs(cli, tmp_path):
    """Quoted in the recipe's ``passes`` string: the exclude pattern protects the stem (a
    literal '"/stem/*"' would match nothing and leave it pruned, with a warning)."""
    recipe = tmp_path / "quoted.toml"
    recipe.write_text(
        "[[job]]\n"
        'name = "quoted"\n'
        f'source = "{(MODELS / "digits_cnn.onnx").as_posix()}"\n'
        'output = "out.onnx"\n'
        'passes = \'channel-prune(ratio=0.5, exclude="/stem/*", importance="l2"), dead-code\'\n'
        "latency_runs = 0\n"
    )
    code, out, err = cli("run", recipe)
    assert code == 0, err
    model = onnx.load(tmp_path / "out.onnx")
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    assert shapes["stem.weight"][0] == 16 and shapes["pw.weight"][0] < 32
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["sparsec.pipeline"] == (
        "channel-prune(ratio=0.5,importance=l2,exclude=/stem/*),dead-code"
    )
    assert "exclude-unmatched" not in out + err and "matches no node" not in out + err


class _Point:
    """An entry point as ``importlib.metadata`` yields it."""

    name, value = "options-plugin", "plugin:OptionsPass"

    def load(self):
        return OptionsPass


def test_an_entry_point_pass_is_described_from_its_class(monkeypatch, cli):
    import importlib.metadata

    registry.available()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: [_Point()] if group == registry.ENTRY_POINT_GROUP else [],
    )
    info = registry.describe("options-plugin")
    assert info.origin == f"{__name__}.OptionsPass" and info.option("scale").help == "A factor."
    code, out, _ = cli("passes", "--describe", "options-plugin")
    assert code == 0 and out.startswith("options-plugin: Options of every kind.\n")
    assert "  mode: Literal['fast', 'exact'] = fast" in out.splitlines()
    assert "      `fast` or `exact`." in out.splitlines()


def _doc_examples() -> list[tuple[str, list[str]]]:
    """(command, output lines) of every ``$ sparsec`` example in docs/commands.md's section on
    ``sparsec passes``; an output ending in ``...`` is a prefix."""
    text = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    section = text[text.index("## `sparsec passes") :]
    examples = []
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, *output = chunk.rstrip("\n").split("\n")
            if output and not command.endswith("\\"):
                examples.append((command, output))
    return examples


@pytest.mark.parametrize("command, expected", _doc_examples(), ids=lambda x: str(x)[:40])
def test_commands_md_shows_real_output(cli, command, expected, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    args = shlex.split(command)[1:]
    args = [str(tmp_path / "x.onnx") if a == "x.onnx" else a for a in args]
    _, out, err = cli(*args)
    lines = (out + err).rstrip("\n").split("\n")
    if expected[-1] == "...":
        expected, lines = expected[:-1], lines[: len(expected) - 1]
    assert lines == expected


def test_a_quoted_pass_file_may_hold_commas_and_spaces(tmp_path):
    folder = tmp_path / "my passes, (v1)"
    folder.mkdir()
    source = (ROOT / "passes" / "drop_tiny_channels.py").read_text(encoding="utf-8")
    (folder / "tiny.py").write_text(source, encoding="utf-8")
    [loaded, cleanup] = registry.parse_pipeline(
        f"'{folder / 'tiny.py'}:DropTinyChannelsPass'(threshold=2), dead-code"
    )
    assert (loaded.name, loaded.threshold, cleanup.name) == ("drop-tiny-channels", 2.0, "dead-code")


@pytest.mark.parametrize("name", ["channel-prune(ratio=0.5", "weight-sparsity(nm=2:4"])
def test_exclude_takes_a_list_or_the_bar_form_alike(name):
    listed = registry.parse_pipeline(f'{name},exclude=["/stem/*", "se.*"])')[0]
    barred = registry.parse_pipeline(f'{name},exclude="/stem/*|se.*")')[0]
    assert listed.exclude == barred.exclude == "/stem/*|se.*"
    assert listed.describe() == barred.describe()


def test_a_required_option_left_out_is_one_input_error(tmp_path):
    (tmp_path / "req.py").write_text(
        "import sparsec\n\n\nclass ReqPass(sparsec.InPlacePass):\n"
        "    def __init__(self, x: int) -> None:\n        self.x = x\n\n"
        "    def call(self, model):\n        return sparsec.PassResult(model, False)\n"
    )
    spec = f"{tmp_path / 'req.py'}:ReqPass"
    for make in (lambda: registry.create(spec), lambda: registry.parse_pipeline(spec)):
        with pytest.raises(InputError, match=r"needs option x \(it has no default\)"):
            make()
    assert registry.create(spec, {"x": 3}).x == 3
