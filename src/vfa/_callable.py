"""Let `vfa.train(cfg)` call the function even though `vfa.train` is also the module that holds it."""
import sys
import types


def make_callable(module_name: str, func_name: str) -> None:
    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, func_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
