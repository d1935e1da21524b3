"""Packaging: the wheel builds without setuptools warnings and carries what it should.

Builds the project as ``pip install`` does (isolated build, the declared setuptools) and
reads the wheel's metadata and file list. Slow-ish (~10-20 s, once per module).
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path

import pytest

from gateway import __version__
from telecodecs.audiofile import AudioFileError, load_audio

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    (wheel,) = out.glob("hamsa_voice_gateway-*.whl")
    return log, zipfile.ZipFile(wheel)


def metadata(wheel: zipfile.ZipFile) -> Message:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return email.message_from_bytes(wheel.read(name))


def test_the_build_prints_no_setuptools_warning(built: tuple[str, zipfile.ZipFile]) -> None:
    log, _ = built
    warnings = [line for line in log.splitlines() if "Warning" in line or "!!" in line]
    assert not warnings, "\n".join(warnings)


def test_metadata_license_classifiers_urls_version(built: tuple[str, zipfile.ZipFile]) -> None:
    _, wheel = built
    meta = metadata(wheel)
    assert meta["Version"] == __version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    classifiers = meta.get_all("Classifier") or []
    assert "Topic :: Communications :: Telephony" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    urls = meta.get_all("Project-URL") or []
    assert any(url.startswith("Hamsa API, https://") for url in urls), urls


def test_pydub_is_an_extra_not_a_core_dependency(built: tuple[str, zipfile.ZipFile]) -> None:
    # Only non-WAV audio files need pydub (and ffmpeg); the gateway reads WAV without it.
    requires = metadata(built[1]).get_all("Requires-Dist") or []
    pydub = [r for r in requires if r.startswith("pydub")]
    assert pydub and all("extra ==" in r for r in pydub), requires
    assert any('extra == "audio"' in r for r in pydub), requires


def test_the_wheel_carries_the_data_files(built: tuple[str, zipfile.ZipFile]) -> None:
    names = set(built[1].namelist())
    folders = [p for p in (ROOT / "gateway").glob("*/*") if p.is_dir() and p.name != "__pycache__"]
    assert folders, "expected data folders (assets, static) under gateway/"
    for folder in folders:
        for path in folder.iterdir():
            if path.is_file():
                assert f"{path.relative_to(ROOT)}" in names, path
    assert "gateway/py.typed" in names and "telecodecs/py.typed" in names


def test_without_pydub_a_non_wav_file_gets_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp3 = tmp_path / "greeting.mp3"
    mp3.write_bytes(b"ID3" + bytes(64))
    monkeypatch.setitem(sys.modules, "pydub", None)  # import pydub -> ImportError
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)  # ffmpeg "there"
    with pytest.raises(AudioFileError, match=r"hamsa-voice-gateway\[audio\]"):
        load_audio(mp3)
