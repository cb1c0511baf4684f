"""Import rules: the layer contracts, no pickle anywhere in src/, a light ``import forgeml``, and a public
API whose names stay what they are."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

SRC = REPO / "src" / "forgeml"

# each pattern is something that loads or writes pickles
PICKLE_PATTERNS = {
    "import pickle": re.compile(r"^\s*import\s+(c?pickle|dill)\b|^\s*import\s+.*,\s*(c?pickle|dill)\b", re.MULTILINE),
    "from pickle": re.compile(r"^\s*from\s+(c?pickle|dill)\b", re.MULTILINE),
    "cloudpickle": re.compile(r"\bcloudpickle\b"),
    "torch.load(": re.compile(r"\btorch\.load\s*\("),
    "np.load(allow_pickle=True)": re.compile(r"\b(np|numpy)\.load\s*\([^)]*allow_pickle\s*=\s*True", re.DOTALL),
}


def pickle_uses(text: str) -> list[str]:
    """The pickle patterns found in a Python source text."""
    return [name for name, pattern in PICKLE_PATTERNS.items() if pattern.search(text)]


def test_import_linter_contracts_are_kept(tmp_path: Path):
    linter = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(linter), str(REPO / ".importlinter"), "--no-cache", "--no-logo"],
        cwd=tmp_path,  # nothing written into the repository
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "forgeml layers (a module imports only from layers below it) KEPT" in result.stdout
    assert "config stays free of torch at import time KEPT" in result.stdout
    assert "the edge runtime never imports torch, the models, training or the predictor KEPT" in result.stdout
    assert re.search(r"Contracts: \d+ kept, 0 broken", result.stdout)


def test_the_pickle_scan_recognises_pickle():
    found = pickle_uses(
        "import os, pickle\nfrom pickle import loads\nimport cloudpickle\nstate = torch.load(path)\n"
        "arrays = np.load(\n    path, allow_pickle=True)\n"
    )
    assert found == list(PICKLE_PATTERNS)
    harmless = "from safetensors.torch import load_file\nnp.load(path)\nvalues = np.loadtxt(handle)\n# no pickle: JSON only\n"
    assert pickle_uses(harmless) == []


def test_no_pickle_anywhere_in_src():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    offenders = {str(path.relative_to(REPO)): found for path in files if (found := pickle_uses(path.read_text(encoding="utf-8")))}
    assert offenders == {}


def test_import_forgeml_does_not_import_torch():
    code = (
        "import sys\n"
        "import forgeml\n"
        "assert 'torch' not in sys.modules, 'import forgeml imported torch'\n"
        "import forgeml.config, forgeml.registry, forgeml.errors\n"
        "assert 'torch' not in sys.modules, 'import forgeml.config imported torch'\n"
        "print(sorted(forgeml.__all__))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['ForgeError', '__version__', 'evaluate', 'load', 'load_config', 'train']"


def test_public_api():
    import forgeml
    from forgeml.errors import ForgeError

    assert forgeml.ForgeError is ForgeError
    assert forgeml.__version__ == "0.1.0"
    assert callable(forgeml.load) and callable(forgeml.load_config)
    assert forgeml.load_config({"data": {"source": "digits"}, "model": {"type": "mlp"}}).model.type == "mlp"


def test_public_train_and_evaluate_stay_callable_after_their_subpackages_are_imported():
    import forgeml
    import forgeml.evaluation  # noqa: F401
    import forgeml.training.job  # noqa: F401

    assert callable(forgeml.train) and callable(forgeml.evaluate)
