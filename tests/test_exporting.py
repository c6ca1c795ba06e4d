"""export.py: --out checks, and GGUF through Unsloth's exporter (mocked: no GPU here): the files collected into --out,
offline llama.cpp handling, and its one-line refusal."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from training_with_unsloth import exporting
from training_with_unsloth.errors import UserError


def _fake_llama_cpp(folder: Path, *, package_converter: bool = False) -> Path:
    """A llama.cpp build as Unsloth checks for one: an executable llama-quantize and the converter beside it."""
    folder.mkdir(parents=True)
    quantizer = folder / "llama-quantize"
    quantizer.write_text("#!/bin/sh\necho usage\n")
    quantizer.chmod(0o755)
    body = "from conversion import TEXT_MODEL_MAP\n" if package_converter else "import gguf\nparser.add_argument('x')\n"
    (folder / "convert_hf_to_gguf.py").write_text(body)
    return folder


@pytest.fixture
def unsloth_env(monkeypatch, tmp_path):
    """Unsloth's llama.cpp variables as the test sets them, restored afterwards; ~ and the cwd are empty folders."""
    for name in ("UNSLOTH_AUTO_INSTALL", "UNSLOTH_LLAMA_CPP_OFFLINE", "UNSLOTH_LLAMA_CPP_PATH", "UNSLOTH_LLAMA_CPP_SCRIPTS_DIR",
                 "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK"):  # fmt: skip
        monkeypatch.setenv(name, "placeholder")  # recorded, so that teardown restores the real value (or its absence)
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def test_out_must_be_a_folder(tmp_path):
    exporting.check_out(tmp_path / "new" / "deeper", overwrite=False)  # does not exist yet: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^--out is a file, not a folder"):
        exporting.check_out(tmp_path / "file", overwrite=True)  # --overwrite never deletes a file
    with pytest.raises(UserError, match=r"^--out's parent .*file is a file"):
        exporting.check_out(tmp_path / "file" / "export", overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="--overwrite"):
        exporting.check_out(tmp_path / "full", overwrite=False)


def test_export_to_a_file_is_one_line(untrained_run_dir, tmp_path, capsys):
    from experiments import export

    target = tmp_path / "taken.txt"
    target.write_text("mine")
    assert export.main(["--run", str(untrained_run_dir), "--checkpoint", "4", "--adapter-only", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out is a file, not a folder") and "\n" not in err
    assert target.read_text() == "mine"


def test_offline_without_llama_cpp_is_one_line_naming_what_is_missing(unsloth_env):
    with pytest.raises(UserError) as caught:
        exporting.llama_cpp_environment(allow_network=False)
    message = str(caught.value)
    assert "\n" not in message
    assert str(unsloth_env / ".unsloth" / "llama.cpp") in message  # Unsloth's default place
    assert "llama-quantize" in message and "convert_hf_to_gguf.py" in message
    assert "UNSLOTH_LLAMA_CPP_PATH" in message and "--download" in message
    assert os.environ["UNSLOTH_AUTO_INSTALL"] == "0" and os.environ["UNSLOTH_LLAMA_CPP_OFFLINE"] == "1"


def test_a_local_llama_cpp_is_found_offline(unsloth_env, tmp_path, monkeypatch):
    build = _fake_llama_cpp(unsloth_env / ".unsloth" / "llama.cpp")
    found = exporting.llama_cpp_environment(allow_network=False)
    assert found == exporting.LlamaCpp(build, build / "llama-quantize", build / "convert_hf_to_gguf.py")
    custom = _fake_llama_cpp(tmp_path / "custom", package_converter=True)
    monkeypatch.setenv("UNSLOTH_LLAMA_CPP_PATH", str(custom))
    with pytest.raises(UserError, match=r"conversion/ package beside convert_hf_to_gguf\.py"):
        exporting.llama_cpp_environment(allow_network=False)  # a package-era converter without its package
    (custom / "conversion").mkdir()
    (custom / "conversion" / "__init__.py").write_text("")
    assert exporting.llama_cpp_environment(allow_network=False).folder == custom
    assert exporting.llama_cpp_environment(allow_network=True) is None  # online: Unsloth fetches what it needs


def test_a_llama_cpp_in_the_working_folder_is_pointed_at(unsloth_env, tmp_path):
    """Unsloth's installer accepts ./llama.cpp, but its offline converter lookup reads only UNSLOTH_LLAMA_CPP_PATH."""
    local = _fake_llama_cpp(tmp_path / "llama.cpp")
    assert exporting.llama_cpp_environment(allow_network=False).folder == local
    assert os.environ["UNSLOTH_LLAMA_CPP_PATH"] == str(local.resolve())


def test_the_switches_are_unsloth_zoos_own():
    """The environment variables, file names and the `_gguf` sibling, as the installed sources spell them."""
    spec = importlib.util.find_spec("unsloth_zoo")
    save = importlib.util.find_spec("unsloth")
    if spec is None or save is None:
        pytest.skip("Unsloth is not installed here (Linux x86-64 only)")
    zoo = (Path(spec.origin).parent / "llama_cpp.py").read_text()
    for name in (*exporting.OFFLINE_SWITCHES, "UNSLOTH_LLAMA_CPP_PATH", "UNSLOTH_LLAMA_CPP_SCRIPTS_DIR"):
        assert f'"{name}"' in zoo, name
    assert 'quantizer_names = ["llama-quantize", "quantize"]' in zoo
    assert 'LLAMA_CPP_CONVERTER_FILENAMES = ("convert_hf_to_gguf.py", "convert-hf-to-gguf.py")' in zoo
    assert 'os.path.join(UNSLOTH_HOME, "llama.cpp")' in zoo and 'os.path.join(str(Path.home()), ".unsloth")' in zoo
    unsloth_save = (Path(save.origin).parent / "save.py").read_text()
    assert 'return f"{save_directory}_gguf"' in unsloth_save
    assert '"gguf_files": all_file_locations' in unsloth_save and '"modelfile_location": modelfile_location' in unsloth_save


class FakeUnslothModel:
    """`save_pretrained_gguf` as Unsloth's: the merge into `save_directory`, GGUF files and a Modelfile into
    `<save_directory>_gguf`, and their paths returned."""

    calls: list[str] = []

    def save_pretrained_gguf(self, save_directory, tokenizer, quantization_method="fast_quantized"):
        self.calls.append(save_directory)
        merged, gguf_dir = Path(save_directory), Path(f"{save_directory}_gguf")
        merged.mkdir(parents=True)
        (merged / "model.safetensors").write_bytes(b"16-bit")
        gguf_dir.mkdir()
        files = [gguf_dir / "model.BF16.gguf", gguf_dir / f"model.{quantization_method.upper()}.gguf"]
        for f in files:
            f.write_bytes(b"GGUF")
        (gguf_dir / "Modelfile").write_text(f"FROM {files[-1].name}\n")
        return {"save_directory": str(merged), "gguf_directory": str(gguf_dir), "gguf_files": [str(f) for f in files],
                "modelfile_location": str(gguf_dir / "Modelfile")}  # fmt: skip


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA and Unsloth "present": the backend's loader hands back the fake model (no weights are read)."""
    from training_with_unsloth import checkpoints
    from training_with_unsloth.models import backends

    loads: list[str] = []
    FakeUnslothModel.calls = []
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "prepare", lambda backend: None)

    def load(cfg, backend, **kwargs):
        loads.append(backend)
        return SimpleNamespace(model=FakeUnslothModel(), tokenizer=object())

    monkeypatch.setattr(backends, "load", load)
    monkeypatch.setattr(checkpoints, "load_weights", lambda model, folder: None)
    return loads


def test_gguf_files_are_collected_into_out(untrained_run_dir, tmp_path, unsloth_env, fake_gpu, capsys):
    from experiments import export

    _fake_llama_cpp(unsloth_env / ".unsloth" / "llama.cpp")
    out = tmp_path / "exports" / "cd-gguf"
    sibling = Path(f"{out}_gguf")
    sibling.mkdir(parents=True)
    (sibling / "keep.txt").write_text("the user's own folder")
    argv = ["--run", str(untrained_run_dir), "--checkpoint", "4", "--gguf", "q8_0", "--out", str(out)]
    assert export.main(argv) == 0
    assert fake_gpu == ["unsloth"]
    written = sorted(p.name for p in out.iterdir())
    assert written == ["Modelfile", "README.md", "export.json", "model.BF16.gguf", "model.Q8_0.gguf"]
    record = json.loads((out / "export.json").read_text())
    assert record["kind"] == "gguf" and record["dtype"] == "q8_0"
    assert record["files"] == ["model.BF16.gguf", "model.Q8_0.gguf", "Modelfile"]
    assert "GGUF (q8_0)" in (out / "README.md").read_text()
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "model.Q8_0.gguf" in printed
    # Unsloth wrote beside --out, in a scratch folder that is gone; the user's <out>_gguf is untouched
    assert Path(FakeUnslothModel.calls[0]).parent.parent == out.parent
    assert sorted(p.name for p in out.parent.iterdir()) == ["cd-gguf", "cd-gguf_gguf"]
    assert [p.name for p in sibling.iterdir()] == ["keep.txt"]
    assert os.environ["UNSLOTH_AUTO_INSTALL"] == "0"  # offline: Unsloth may not install llama.cpp


def test_gguf_offline_without_llama_cpp_stops_before_loading(untrained_run_dir, tmp_path, unsloth_env, fake_gpu, capsys):
    from experiments import export

    out = tmp_path / "g"
    assert export.main(["--run", str(untrained_run_dir), "--checkpoint", "4", "--gguf", "q4_k_m", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --gguf offline needs a llama.cpp build") and "\n" not in err
    assert fake_gpu == [] and not out.exists() and not Path(f"{out}_gguf").exists()


def test_collecting_refuses_an_export_without_gguf_files(tmp_path):
    (tmp_path / "Modelfile").write_text("FROM x\n")
    with pytest.raises(UserError, match="wrote no .gguf file"):
        exporting.collect_gguf([tmp_path / "Modelfile"], tmp_path / "out")
    with pytest.raises(UserError, match="which it did not write"):
        exporting.collect_gguf([tmp_path / "missing.gguf"], tmp_path / "out2")
    sibling = tmp_path / "m_gguf"
    sibling.mkdir()
    (sibling / "a.gguf").write_bytes(b"GGUF")
    assert exporting.gguf_outputs(None, tmp_path / "m") == [sibling / "a.gguf"]  # an Unsloth that returns nothing
