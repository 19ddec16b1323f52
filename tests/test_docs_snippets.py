"""Every ```python block of README.md, docs/*.md and docs/causes/*.md runs, so a doc example that
raises cannot land; the ``unstuck ...`` lines of the ```bash blocks name real commands and
options, and those whose inputs the harness has run.

The docs are the product: a snippet a reader copies must work. Each block runs in a fresh
namespace (``__name__ == "__main__"``) in its own temporary working directory, so what it writes
lands in ``tmp_path``.

**The harness.** Doc snippets use placeholders (``model``, ``optimizer``, ``loader``, ...). A
snippet's free names (read but never bound in the block) are filled from a table of factories,
built lazily so a snippet pays only for what it reads. The default table (``setup torch``) is a
tiny classification MLP on random data:

=================  ====================================================================
``unstuck``,       the modules (``F`` is ``torch.nn.functional``, ``np`` is numpy)
``torch``, ``F``,
``nn``, ``np``
``model``          ``Linear(8, 16) -> ReLU -> Linear(16, 3)``
``optimizer``      SGD on ``model``, lr 0.05
``scheduler``      a constant ``LambdaLR`` on ``optimizer``
``train_set``      a ``TensorDataset`` of 1,024 samples (8 features, 3 classes)
``loader``         ``DataLoader(train_set, batch_size=16)``: 64 steps of ``(x, y)``
``x``, ``y``       one batch of 32; ``loss`` = ``loss_fn(model(x), y)``
``loss_fn``        ``F.cross_entropy``; ``evaluate(model)`` a validation loss
``guard``          ``unstuck.Guard(model, optimizer)``
``step``,          a point and a series for the detector (a 1/t decay that flattens)
``value``,
``steps``,
``values``
=================  ====================================================================

Other tables, chosen with ``<!-- snippet: setup NAME -->``: ``indexed`` (the default with a
``loader`` of ``(x, y, idx)`` triples), ``keras`` (a compiled Keras 3 MLP, numpy ``x``/``y`` and
the Keras ``UnstuckCallback``), ``lightning`` (``L``, ``module``, ``train``/``val`` loaders,
``ModelCheckpoint`` and the Lightning ``UnstuckCallback``; its module logs ``train_loss`` and
``val_loss``), ``lightning-module`` (the same; the block's functions are then used as the methods
of that module, e.g. a ``configure_optimizers``, and a ``Trainer`` fits it for 40 steps) and ``hf``
(a one-layer BERT built from a config, ``train``/``val`` lists, ``Trainer``/``TrainingArguments``
and an ``optimizer``).

Every working directory also holds files the docs read: ``runs/exp1`` (the run store of a short
``policy="rescue"`` Guard run with an LR 1,000x too small, its report, and its TensorBoard
mirror in ``runs/exp1/tb``) and ``out/trainer_state.json`` (an HF Trainer log from the fixtures).

**Markers.** An HTML comment on the line(s) right above a fence, invisible when rendered:

- ``<!-- snippet: skip REASON -->``: not run; the reason is required, and skips are few
  (``MAX_SKIPPED``). For genuine fragments only, such as a signature listing.
- ``<!-- snippet: tested-by tests/test_x.py::test_name -->``: another test runs this block and
  checks what it does (the long framework examples); this file checks that the test exists and
  reads the page, rather than paying for the run twice.
- ``<!-- snippet: requires MODULE ... -->``: skipped when a module is not installed (in CI, where
  ``CI`` is set, that is a failure).
- ``<!-- snippet: setup NAME -->``: the harness table (see above).
- ``<!-- snippet: signature DOTTED.NAME -->``: the block is a signature listing, ``Name(a, b=1,
  *, c=None, **options)`` or a ``class`` of ``def`` lines; it is not run but compared with
  ``inspect.signature`` of the real object (names, kinds, defaults), so it cannot drift.

An unknown marker, or one that is not right above a fence, is a failure: a typo must not turn a
test off silently. Printed output shown in the docs is never compared: it is the console's to
change.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import shutil
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs" / "causes").glob("*.md")),
]
MAX_SKIPPED = 4  # skipping is for fragments (signature listings); more means the docs drifted

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<kind>[\w-]+)\s*(?P<arg>.*?)\s*-->\s*$")
MARKER_KINDS = frozenset({"skip", "tested-by", "requires", "setup", "signature"})


# ------------------------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Snippet:
    """One fenced block, with the markers right above it."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    markers: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"

    def marker(self, kind: str) -> str | None:
        return next((arg for k, arg in self.markers if k == kind), None)


def parse_page(page: Path) -> tuple[list[Snippet], list[str]]:
    """The page's fenced blocks, and a problem for each marker that is not right above one."""
    lines = page.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    problems: list[str] = []
    pending: list[tuple[int, str, str]] = []  # markers seen since the last non-marker line
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        fence = FENCE.match(lines[i])
        if marker:
            pending.append((i + 1, marker["kind"], marker["arg"]))
            i += 1
            continue
        if fence is None:
            problems += [f"{page.name}:{n}: marker not right above a fence" for n, _, _ in pending]
            pending = []
            i += 1
            continue
        start, indent = i, fence["indent"]
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != f"{indent}```":
            body.append(lines[i])
            i += 1
        code = textwrap.dedent("\n".join(body)) + "\n"
        markers = tuple((kind, arg) for _, kind, arg in pending)
        snippets.append(Snippet(page, start + 1, fence["lang"], code, markers))
        pending = []
        i += 1  # the closing fence
    problems += [f"{page.name}:{n}: marker not right above a fence" for n, _, _ in pending]
    return snippets, problems


def all_snippets() -> list[Snippet]:
    return [s for page in PAGES for s in parse_page(page)[0]]


PYTHON = [s for s in all_snippets() if s.lang == "python"]
SHELL = [s for s in all_snippets() if s.lang in ("bash", "sh", "shell", "console")]


def free_names(code: str) -> set[str]:
    """Names the block reads but never binds anywhere (an over-approximation of binding is fine
    for doc snippets): what the harness must supply."""
    tree = ast.parse(code)
    loaded: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


# ------------------------------------------------------------------------------------ harness

Factory = Callable[["Harness"], Any]


class Harness:
    """Builds the placeholders a snippet reads, each once, on demand."""

    def __init__(self, table: dict[str, Factory]) -> None:
        self.table = table
        self.built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.built:
            self.built[name] = self.table[name](self)
        return self.built[name]


def _torch_table() -> dict[str, Factory]:
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812  (the docs' name)
    from torch.utils.data import DataLoader, TensorDataset

    import unstuck

    def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 8, generator=g)
        return x, (x[:, :3] @ torch.tensor([1.0, -1.0, 0.5])).gt(0).long() + x[:, 3].gt(1).long()

    def model(h: Harness) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def evaluate(h: Harness) -> Callable[[torch.nn.Module], torch.Tensor]:
        vx, vy = data(128, 1)

        def evaluate(net: torch.nn.Module) -> torch.Tensor:
            with torch.no_grad():
                return F.cross_entropy(net(vx), vy)

        return evaluate

    def series(h: Harness) -> tuple[list[int], list[float]]:
        rng = np.random.default_rng(0)
        steps = list(range(400))
        return steps, [1 / (1 + s / 20) + 0.01 * float(rng.normal()) for s in steps]

    return {
        "unstuck": lambda h: unstuck,
        "torch": lambda h: torch,
        "nn": lambda h: torch.nn,
        "F": lambda h: F,
        "np": lambda h: np,
        "model": model,
        "optimizer": lambda h: torch.optim.SGD(h["model"].parameters(), lr=0.05),
        "scheduler": lambda h: torch.optim.lr_scheduler.LambdaLR(h["optimizer"], lambda s: 1.0),
        "loss_fn": lambda h: F.cross_entropy,
        "train_set": lambda h: TensorDataset(*data(1024, 0)),
        "loader": lambda h: DataLoader(h["train_set"], batch_size=16),
        "x": lambda h: data(32, 2)[0],
        "y": lambda h: data(32, 2)[1],
        "loss": lambda h: h["loss_fn"](h["model"](h["x"]), h["y"]),
        "evaluate": evaluate,
        "guard": lambda h: unstuck.Guard(h["model"], h["optimizer"], console=False),
        "step": lambda h: 0,
        "value": lambda h: 1.0,
        "steps": lambda h: series(h)[0],
        "values": lambda h: series(h)[1],
    }


def _indexed_table() -> dict[str, Factory]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    table = _torch_table()
    table["train_set"] = lambda h: TensorDataset(
        *_torch_table()["train_set"](h).tensors, torch.arange(1024)
    )
    table["loader"] = lambda h: DataLoader(h["train_set"], batch_size=16)
    return table


def _keras_table() -> dict[str, Factory]:
    os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported
    pytest.importorskip("keras")
    import keras
    import numpy as np

    from unstuck.integrations.keras import UnstuckCallback

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(16, 4)), axis=1)

    def model(h: Harness) -> Any:
        keras.utils.set_random_seed(0)
        net = keras.Sequential(
            [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
        )
        net.compile(
            keras.optimizers.SGD(learning_rate=1e-2),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return net

    return {
        "keras": lambda h: keras,
        "np": lambda h: np,
        "model": model,
        "x": lambda h: x,
        "y": lambda h: y,
        "UnstuckCallback": lambda h: UnstuckCallback,
    }


def _lightning_table() -> dict[str, Factory]:
    L = pytest.importorskip("lightning")  # noqa: N806  (the name Lightning's docs use)
    import torch
    import torch.nn.functional as F  # noqa: N812  (the docs' name)
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from unstuck.integrations.lightning import UnstuckCallback

    class Regression(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 3)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.mse_loss(self.net(x), y)
            self.log("train_loss", loss)  # what a scheduler's "monitor" may name
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def loader(n: int, seed: int) -> DataLoader[Any]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 4, generator=g)
        y = x @ torch.linspace(-1.0, 1.0, 12).reshape(4, 3) + 0.1 * torch.randn(n, 3, generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=16)

    def module(h: Harness) -> Any:
        torch.manual_seed(0)
        return Regression()

    def fit_methods(h: Harness, methods: dict[str, Callable[..., Any]]) -> None:
        """Run a block of LightningModule methods as the methods of a module: 40 real steps."""
        cls = type("DocsModule", (Regression,), methods)
        torch.manual_seed(0)
        trainer = L.Trainer(
            max_steps=40,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(cls(), h["train"])
        assert trainer.global_step == 40

    import unstuck

    return {
        "L": lambda h: L,
        "torch": lambda h: torch,
        "F": lambda h: F,
        "unstuck": lambda h: unstuck,
        "module": module,
        "fit_methods": lambda h: fit_methods,
        "train": lambda h: loader(16 * 20, 0),  # 20 steps an epoch
        "val": lambda h: loader(32, 1),
        "ModelCheckpoint": lambda h: ModelCheckpoint,
        "UnstuckCallback": lambda h: UnstuckCallback,
    }


def _hf_table() -> dict[str, Factory]:
    transformers = pytest.importorskip("transformers")
    import torch

    import unstuck

    def model(h: Harness) -> Any:
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=16, num_labels=2,
        )  # fmt: skip
        return transformers.BertForSequenceClassification(config)

    def rows(n: int, seed: int) -> list[dict[str, Any]]:
        ids = torch.randint(0, 50, (n, 8), generator=torch.Generator().manual_seed(seed))
        return [{"input_ids": row, "labels": row[0] % 2} for row in ids]

    return {
        "unstuck": lambda h: unstuck,
        "torch": lambda h: torch,
        "model": model,
        "optimizer": lambda h: torch.optim.AdamW(h["model"].parameters(), lr=1e-3),
        "train": lambda h: rows(64, 0),
        "val": lambda h: rows(32, 1),
        "Trainer": lambda h: transformers.Trainer,
        "TrainingArguments": lambda h: transformers.TrainingArguments,
    }


SETUPS: dict[str, Callable[[], dict[str, Factory]]] = {
    "torch": _torch_table,
    "indexed": _indexed_table,
    "keras": _keras_table,
    "lightning": _lightning_table,
    "lightning-module": _lightning_table,
    "hf": _hf_table,
}


@pytest.fixture(scope="session")
def docs_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the docs read, made once: a real run store (with a finding, an action, the
    report and a TensorBoard mirror) and an HF Trainer log."""
    import torch

    import unstuck

    root = tmp_path_factory.mktemp("docs-files")
    table = Harness(_torch_table())
    model, loader = table["model"], table["loader"]
    optimizer = torch.optim.SGD(model.parameters(), lr=5e-5)  # 1,000x too small: lr_too_low
    guard = unstuck.Guard(
        model, optimizer, policy="rescue", run_dir=root / "runs" / "exp1", console=False,
        flush_every=25, horizon=50, cooldown=25, tensorboard=root / "runs" / "exp1" / "tb",
        meta={"lr": 5e-5, "model": "mlp"},
    )  # fmt: skip
    with guard:
        for _ in range(4):
            for x, y in loader:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                guard.step(loss)
            guard.validate(table["evaluate"](model))
    assert guard.findings, "the docs' run store should hold a finding"
    (root / "out").mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "logs" / "hf" / "trainer_state.json", root / "out")
    return root


@contextlib.contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _close_guards(values: Iterator[Any]) -> None:
    """Close what a snippet left open, so its hooks and store do not outlive the test."""
    from unstuck import Guard

    for value in values:
        if isinstance(value, Guard):
            value.close()


def _require(modules: str) -> None:
    for module in modules.split():
        if importlib.util.find_spec(module) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{module} is not installed; CI must install it")
            pytest.skip(f"{module} is not installed")


# ------------------------------------------------------------------------------------ the tests


# Blocks run here; the others are run by the test they name or compared as signatures below.
RUN_HERE = [s for s in PYTHON if s.marker("tested-by") is None and s.marker("signature") is None]


@pytest.mark.parametrize("snippet", RUN_HERE, ids=lambda s: s.id)
def test_python_snippet_runs(
    snippet: Snippet, docs_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip = snippet.marker("skip")
    if skip is not None:
        pytest.skip(skip)
    if snippet.marker("requires"):
        _require(snippet.marker("requires") or "")
    setup = snippet.marker("setup") or "torch"
    assert setup in SETUPS, f"{snippet.id}: unknown setup {setup!r}; known: {sorted(SETUPS)}"
    harness = Harness(SETUPS[setup]())
    needed = free_names(snippet.code)
    unknown = sorted(needed - set(harness.table))
    assert not unknown, (
        f"{snippet.id} reads {unknown}, which neither it nor the {setup!r} harness defines: "
        "define them in the snippet, add them to the harness, or mark the block"
    )
    shutil.copytree(docs_files, tmp_path, dirs_exist_ok=True)
    # MLflow's file store: its default SQLite store spends seconds creating tables.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        with _in_dir(tmp_path), contextlib.redirect_stdout(io.StringIO()):
            namespace.update({name: harness[name] for name in sorted(needed)})
            exec(compile(snippet.code, snippet.id, "exec"), namespace)
            if setup == "lightning-module":
                methods = {
                    name: value
                    for name, value in namespace.items()
                    if inspect.isfunction(value) and value.__code__.co_filename == snippet.id
                }
                assert methods, f"{snippet.id}: setup lightning-module but no method defined"
                harness["fit_methods"](harness, methods)
    finally:
        _close_guards(iter([*namespace.values(), *harness.built.values()]))


def test_tested_by_names_a_test_of_the_page() -> None:
    """A block handed to another test is really run there: the test exists and reads the page."""
    for snippet in PYTHON:
        target = snippet.marker("tested-by")
        if target is None:
            continue
        path, _, name = target.partition("::")
        test_file = ROOT / path
        assert test_file.is_file(), f"{snippet.id}: {path} does not exist"
        source = test_file.read_text(encoding="utf-8")
        functions = {
            node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
        }
        assert name in functions, f"{snippet.id}: {path} has no test {name!r}"
        page = snippet.page.name
        assert page in source, f"{snippet.id}: {path} never reads {page}"


def _documented_signatures(code: str) -> dict[str, inspect.Signature]:
    """The listing's signatures by member name ('' for a call listing), annotations dropped."""
    text = code.strip()
    if not text.startswith("class "):
        # ``Name(a, *, b=1)`` is a def header once the name is swapped: parse it as one.
        text = re.sub(r"^[\w.]+\(", "def _(", text, count=1) + ": ..."
    functions = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef)]
    signatures: dict[str, inspect.Signature] = {}
    for function in functions:
        function.returns = None
        function.decorator_list = []
        for arg in ast.walk(function.args):
            if isinstance(arg, ast.arg):
                arg.annotation = None
        namespace: dict[str, Any] = {}
        exec(ast.unparse(function), namespace)  # only evaluates the defaults
        signature = inspect.signature(namespace[function.name])
        if function.name != "_":
            signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        signatures["" if function.name == "_" else function.name] = signature
    return signatures


def _resolve(dotted: str) -> Any:
    module, _, attribute = dotted.rpartition(".")
    while module:
        try:
            obj = importlib.import_module(module)
        except ImportError:
            module, _, head = module.rpartition(".")
            attribute = f"{head}.{attribute}"
            continue
        for part in attribute.split("."):
            obj = getattr(obj, part)
        return obj
    return importlib.import_module(attribute)


def _shape(signature: inspect.Signature) -> list[tuple[str, str, Any]]:
    return [(p.name, p.kind.name, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize(
    "snippet", [s for s in PYTHON if s.marker("signature")], ids=lambda s: s.id
)
def test_signature_listings_match_the_code(snippet: Snippet) -> None:
    """A documented signature lists the real parameters, in order, with their kinds and
    defaults: the listing is what a reader copies from."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    dotted = snippet.marker("signature") or ""
    root = dotted.split(".")[2] if dotted.startswith("unstuck.integrations.") else ""
    if root in ("lightning", "hf", "keras"):
        _require({"hf": "transformers"}.get(root, root))
    obj = _resolve(dotted)
    for member, documented in _documented_signatures(snippet.code).items():
        target = getattr(obj, member) if member else obj
        real = inspect.signature(target)
        if member:  # a method listing leaves out self
            real = real.replace(parameters=list(real.parameters.values())[1:])
        assert _shape(documented) == _shape(real), (
            f"{snippet.id}: the listing of {dotted}{'.' + member if member else ''} says\n"
            f"  {documented}\nbut the code has\n  {real}"
        )


def test_markers_are_known_and_above_a_fence() -> None:
    problems: list[str] = []
    for page in PAGES:
        snippets, misplaced = parse_page(page)
        problems += misplaced
        for snippet in snippets:
            for kind, arg in snippet.markers:
                if kind not in MARKER_KINDS:
                    problems.append(f"{snippet.id}: unknown marker {kind!r}")
                elif not arg:
                    problems.append(f"{snippet.id}: marker {kind!r} needs an argument")
            if snippet.markers and snippet.lang != "python":
                problems.append(f"{snippet.id}: markers apply to python blocks only")
    assert not problems, "\n".join(problems)


def test_few_snippets_are_skipped() -> None:
    skipped = [s.id for s in PYTHON if s.marker("skip") is not None]
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped snippets: {skipped}"
    assert len(PYTHON) >= 25  # the parser still finds the blocks


# ------------------------------------------------------------------------------------ the pages


def test_no_page_points_at_files_a_reader_does_not_have() -> None:
    """REFERENCE.md and DESIGN.md were working notes beside the repository; the docs cite
    docs/references.md instead."""
    stale = re.compile(r"\b(REFERENCE|DESIGN)(\.md\b|'s\b|\s+§)")
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for page in PAGES
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        if stale.search(line)
    ]
    assert not hits, "\n".join(hits)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, and a
    -1, -2 ... suffix on repeats; headings inside fences do not count."""
    anchors: set[str] = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def test_relative_links_and_anchors_resolve() -> None:
    """A link between pages (``guard.md#constructor``) lands on a file and a heading that exist,
    so a renamed heading or a moved page is caught."""
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)} -> {target}"
            if not resolved.exists():
                broken.append(f"{where}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{where}: no such heading")
    assert not broken, "\n".join(broken)


# ------------------------------------------------------------------------------------ the shell


def _unstuck_commands() -> list[tuple[str, list[str]]]:
    """Every ``unstuck ...`` line of the shell blocks, as (where, argv without 'unstuck')."""
    commands = []
    for snippet in SHELL:
        for offset, line in enumerate(snippet.code.splitlines(), start=1):
            for part in re.split(r"&&|;", line.split("#", 1)[0]):
                words = shlex.split(part)
                if words[:1] == ["unstuck"]:
                    commands.append((f"{snippet.id}+{offset}", words[1:]))
    return commands


COMMANDS = _unstuck_commands()


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from unstuck.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


def _documented_options() -> list[tuple[str, str, str]]:
    """(where, command, option) for each option that cli.md and analyze.md list in an option
    table or a usage line; the command is the one the section's heading names."""
    found = []
    for page in (ROOT / "docs" / "cli.md", ROOT / "docs" / "analyze.md"):
        command = None
        in_fence = False
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            if FENCE.match(line):
                in_fence = not in_fence
                continue
            heading = re.match(r"^#+ .*`unstuck (\w+)`", line)
            if heading and not in_fence:
                command = heading[1]
            usage = re.match(r"^unstuck (\w+) .*\[", line) if in_fence else None
            if usage:
                command = usage[1]
            cell = re.match(r"^\|([^|]*)\|", line)
            if command and (usage or (cell and not in_fence) or (in_fence and "[-" in line)):
                text = line if usage or in_fence else cell[1] if cell else ""
                for option in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", text):
                    found.append((f"{page.name}:{n}", command, option))
    return found


def test_documented_cli_options_exist() -> None:
    """Every option the command pages list is one the command accepts."""
    helps: dict[str, str] = {}
    missing = []
    for where, command, option in _documented_options():
        if command not in helps:
            code, helps[command] = _run_cli([command, "--help"])
            assert code == 0, f"{where}: `unstuck {command}` is not a command"
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[command]):
            missing.append(f"{where}: `unstuck {command}` has no option {option}")
    assert not missing, "\n".join(missing)
    assert len(_documented_options()) >= 20  # the parser still finds the tables


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_cli_lines_name_real_commands_and_options(
    where: str, argv: list[str], docs_files: Path, tmp_path: Path
) -> None:
    """Each option a doc line uses is in the command's --help; a line whose input the harness
    has (``runs/exp1``, ``out/trainer_state.json``) runs and exits 0. ``demo`` is not run here
    (``tests/test_cli.py`` runs it)."""
    command = argv[0]
    code, usage = _run_cli([command, "--help"])
    assert code == 0, f"{where}: `unstuck {command}` is not a command"
    words = argv[1:]
    if command == "run":  # everything from the script on is the script's, not unstuck's
        from unstuck.cli.run import split_argv

        words = split_argv(words)[0]
    for word in words:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", usage), (
                f"{where}: `unstuck {command}` has no option {option}"
            )
    paths = [w for w in argv[1:] if not w.startswith("-") and ("/" in w or "." in w)]
    if command == "demo" or not paths or not all((docs_files / p).exists() for p in paths[:1]):
        return
    if command in ("watch", "run") and "--once" not in argv:
        return  # a live view refreshes until Ctrl-C, and run starts a training script
    shutil.copytree(docs_files, tmp_path, dirs_exist_ok=True)
    with _in_dir(tmp_path):
        code, _ = _run_cli(argv)
    assert code == 0, f"{where}: `unstuck {shlex.join(argv)}` exited {code}"
