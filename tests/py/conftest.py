import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FENNEC = pathlib.Path(os.environ.get("FENNEC_BIN", ROOT / "build" / "fennec"))
MODELS = ROOT / "models"
SMOL = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = MODELS / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="session")
def fennec():
    if not FENNEC.exists():
        pytest.fail(f"{FENNEC} is missing: build first (scripts/setup.sh)")
    return str(FENNEC)
