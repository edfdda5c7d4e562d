"""Registries of plugins: entry points and import paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llm_worker.jobs.templates import TemplateError
from llm_worker.running.pipelines import Pipeline, builtin_pipelines
from llm_worker.running.registry import Registry, RegistryError, import_object
from tests.support.plugins import ShoutPipeline


def test_lookup_of_an_unknown_name_lists_what_exists() -> None:
    pipelines = builtin_pipelines()
    with pytest.raises(TemplateError, match=r"unknown pipeline 'nope' \(available: echo\)"):
        pipelines.get("nope")


def test_import_paths() -> None:
    assert import_object("tests.support.plugins:ShoutPipeline") is ShoutPipeline
    assert import_object("tests.support.plugins.ShoutPipeline") is ShoutPipeline
    with pytest.raises(RegistryError, match="cannot import 'no_such_module'"):
        import_object("no_such_module:thing")
    with pytest.raises(RegistryError, match="has no attribute 'Nope'"):
        import_object("tests.support.plugins:Nope")
    with pytest.raises(RegistryError, match="not an import path"):
        import_object("justaname")


def test_specs_register_instances_of_classes() -> None:
    registry: Registry[Pipeline] = Registry("pipeline")
    registry.load_specs(" shout = tests.support.plugins:ShoutPipeline , ")
    assert isinstance(registry.get("shout"), ShoutPipeline)
    with pytest.raises(RegistryError, match=r"expected name=package\.module:attribute"):
        registry.load_specs("shout")


def test_entry_points_of_installed_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installed distribution, as pip would leave it, that declares a pipeline.
    dist_info = tmp_path / "shout_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[llm_worker.pipelines]\nshout = tests.support.plugins:ShoutPipeline\n"
        "[llm_worker.inserts]\nbroken = tests.support.plugins:DoesNotExist\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert str(tmp_path) in sys.path

    pipelines = builtin_pipelines()
    pipelines.load_entry_points("llm_worker.pipelines")
    assert isinstance(pipelines.get("shout"), ShoutPipeline)
    assert list(pipelines) == ["echo", "shout"]

    inserts: Registry[object] = Registry("insert")
    with pytest.raises(RegistryError, match="cannot load insert 'broken'"):
        inserts.load_entry_points("llm_worker.inserts")
