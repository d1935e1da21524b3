"""The codecs/ folder is importable as telecodecs and does not shadow the stdlib codecs."""

import importlib
import sysconfig
from pathlib import Path

import telecodecs

REPO = Path(__file__).resolve().parents[2]


def test_import_codecs_is_the_standard_library() -> None:
    # Imported by name at run time: mypy, run from the repository root, would otherwise
    # resolve `codecs` to the codecs/ folder, which is exactly the confusion tested here.
    codecs = importlib.import_module("codecs")
    assert codecs.lookup("utf-8").name == "utf-8"
    assert codecs.__file__ is not None
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(codecs.__file__).resolve().parent == stdlib


def test_telecodecs_is_the_repository_codecs_folder() -> None:
    assert Path(telecodecs.__file__).resolve() == REPO / "codecs" / "__init__.py"
