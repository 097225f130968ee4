"""The plugin system: registries, clashes, the allowlist; every hook tested and documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from ensemble_engine import hookspecs
from ensemble_engine.errors import PluginError
from ensemble_engine.hookspecs import hookimpl
from ensemble_engine.losses import create_loss
from ensemble_engine.plugins import KINDS, PluginHost, get_host, reset_host
from ensemble_engine.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_")
)


def make_plugin(**hooks):
    """A plugin object whose hook implementations call ``register`` with the given names."""
    ns = SimpleNamespace()
    for hook, names in hooks.items():

        def impl(register, _names=names):
            for name in _names:
                register(name, lambda **kw: kw, description=f"{name} test entry")

        setattr(ns, hook, hookimpl(impl, specname=hook))
    return ns


def test_registry_aliases_filters_and_unknown_names():
    reg = Registry("loss")
    reg.register("taylor_ce", dict, description="d", aliases=("taylor",), plugin="p")
    reg.register("ce", dict, plugin="p")
    assert reg.resolve("taylor") == "taylor_ce"
    assert reg.get("taylor").name == "taylor_ce"
    assert [e.name for e in reg.list("tay*")] == ["taylor_ce"]
    assert [e.name for e in reg] == ["ce", "taylor_ce"]
    with pytest.raises(PluginError, match="unknown loss 'nope'; known: ce, taylor_ce"):
        reg.get("nope")


def test_registry_alias_clash_names_both_plugins():
    reg = Registry("loss")
    reg.register("taylor_ce", dict, aliases=("taylor",), plugin="first")
    with pytest.raises(
        PluginError, match="'taylor' is registered by both plugin 'first' and plugin 'second'"
    ):
        reg.register("taylor", dict, plugin="second")


def test_duplicate_name_across_plugins_is_an_error_naming_both():
    host = PluginHost()
    host.add(make_plugin(register_combiners=["median"]), "alpha")
    host.add(make_plugin(register_combiners=["median"]), "beta")
    with pytest.raises(
        PluginError, match="'median' is registered by both plugin 'alpha' and plugin 'beta'"
    ):
        host.collect()


def test_each_kind_collects_into_its_registry_with_attribution():
    host = PluginHost()
    host.add(make_plugin(**{f"register_{k}": [f"x_{k}"] for k in KINDS}), "allkinds", version="1.2")
    for kind in KINDS:
        entry = host.registry(kind).get(f"x_{kind}")
        assert entry.plugin == "allkinds"
    info = host.plugin_infos()[0]
    assert info.version == "1.2"
    assert info.registers == {k: [f"x_{k}"] for k in KINDS}


@pytest.fixture
def global_host():
    """The process-wide host, reloaded after the test so added plugins do not leak."""
    reset_host()
    yield get_host()
    reset_host()


def test_hook_register_losses(global_host):
    import torch

    class Doubled(torch.nn.Module):
        def __init__(self, reduction="mean"):
            super().__init__()
            self.reduction = reduction

        def forward(self, logits, target):
            return 2 * torch.nn.functional.cross_entropy(logits, target, reduction=self.reduction)

    ns = SimpleNamespace(
        register_losses=hookimpl(
            lambda register: register("doubled_ce", Doubled, aliases=("dce",)),
            specname="register_losses",
        )
    )
    global_host.add(ns, "doubles")
    loss = create_loss("dce", reduction="sum")
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    expected = 2 * -torch.log_softmax(logits, 1)[0, 0]
    assert torch.allclose(loss(logits, target), expected)


def test_hook_register_datasets(global_host, tmp_path):
    from ensemble_engine.data import Sample, open_dataset

    class Two:
        def __init__(self, root):
            self.root, self.classes = root, ["a", "b"]

        def split_names(self):
            return ["train"]

        def samples(self, split):
            return [Sample("x", self.root / "x.png", 0), Sample("y", self.root / "y.png", 1)]

    ns = SimpleNamespace(
        register_datasets=hookimpl(
            lambda register: register("two", Two), specname="register_datasets"
        )
    )
    global_host.add(ns, "twos")
    source = open_dataset(tmp_path, name="two")
    assert [s.sample_id for s in source.samples("train")] == ["x", "y"]


def test_hook_register_tta_views(global_host):
    import torch

    ns = SimpleNamespace(
        register_tta_views=hookimpl(
            lambda register: register("negate", lambda: lambda images, generator: -images),
            specname="register_tta_views",
        )
    )
    global_host.add(ns, "negates")
    view = global_host.tta_views.get("negate").factory()
    assert torch.equal(view(torch.ones(1, 3, 2, 2), torch.Generator()), -torch.ones(1, 3, 2, 2))


def test_hook_register_producers(global_host):
    from ensemble_engine.producer import Producer

    class Nothing(Producer):
        def produce(self, request):
            return []

    ns = SimpleNamespace(
        register_producers=hookimpl(
            lambda register: register("nothing", Nothing), specname="register_producers"
        )
    )
    global_host.add(ns, "nothings")
    assert global_host.producers.get("nothing").plugin == "nothings"
    assert global_host.producers.get("nothing").factory().produce(None) == []


def test_hook_register_combiners(global_host):
    import numpy as np

    from ensemble_engine.combiner import Combiner, InputChunk, Output

    class First(Combiner):
        def apply(self, inputs, rows, on_fit_split):
            return Output(kind="probs", scores=inputs["inputs"][0].probs())

    ns = SimpleNamespace(
        register_combiners=hookimpl(
            lambda register: register("first", First), specname="register_combiners"
        )
    )
    global_host.add(ns, "firsts")
    combiner = global_host.combiners.get("first").factory({}, classes=["a", "b"])
    chunk = InputChunk("m", "probs", ["a", "b"], {}, scores=np.array([[0.2, 0.8]]))
    out = combiner.apply({"inputs": [chunk]}, slice(0, 1), False)
    np.testing.assert_allclose(out.scores, [[0.2, 0.8]])


def test_hook_register_commands(global_host, run_cli):
    import click

    @click.command("hello")
    @click.argument("who")
    def hello(who):
        click.echo(f"hi {who}")

    ns = SimpleNamespace(
        register_commands=hookimpl(lambda cli: cli.add_command(hello), specname="register_commands")
    )
    global_host.add(ns, "cmds")
    res = run_cli("hello", "there")
    assert res.exit_code == 0 and res.output == "hi there\n"
    assert global_host.infos["cmds"].registers["commands"] == ["hello"]


def test_misspelt_hook_is_caught_by_check_pending():
    ns = SimpleNamespace(register_loss=hookimpl(lambda register: None))
    host = PluginHost()
    with pytest.raises(PluginError, match="plugin 'typo' is broken"):
        host.add(ns, "typo")
    assert not host.pm.has_plugin("typo")


def test_builtins_load_through_entry_points():
    host = get_host()
    infos = {i.name: i for i in host.plugin_infos()}
    for name in ("ee_losses", "ee_data", "ee_fusion", "ee_timm", "ee_tta"):
        assert infos[name].builtin, name
    assert "imagefolder" in host.datasets
    assert "taylor" in host.losses


def test_allowlist_hides_third_party_plugins(monkeypatch):
    """EE_PLUGINS="" loads built-ins only; the end-to-end check with a real install is in
    test_example_plugin.py."""
    monkeypatch.setenv("EE_PLUGINS", "")
    host = PluginHost()
    host.load_entry_points()
    assert all(i.builtin for i in host.plugin_infos())


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    """Each hookspec has a ``test_hook_<name>`` that uses it through a plugin (datasette's rule)."""
    pattern = re.compile(rf"^def test_hook_{hook}\(", re.M)
    files = [
        p
        for p in (ROOT / "tests").glob("test_*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert files, f"no test named test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Writing plugins$(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md needs a '## Writing plugins' section"
    assert f"`{hook}" in section.group(1), f"README's plugin section does not document {hook}"
