"""lm_eval's public names: each is the function or class it names, whatever was imported before (a
submodule of the same name, once imported, would shadow an exported function: `lm_eval.word_kl(...)`
then called a module)."""

import importlib
import inspect
import pkgutil

import lm_eval


def test_every_export_is_its_function_or_class_after_every_submodule_is_imported():
    for module in pkgutil.iter_modules(lm_eval.__path__):
        importlib.import_module(f"lm_eval.{module.name}")
    for name in lm_eval.__all__:
        value = getattr(lm_eval, name)
        assert not inspect.ismodule(value), f"lm_eval.{name} is a module, not the export of that name"
        assert value is getattr(importlib.import_module(lm_eval._WHERE[name]), name)
