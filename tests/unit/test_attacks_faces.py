"""Attack strength on real faces (AT&T, 64 px): calibration checks of DeepInversion and GMI.

Marked ``slow`` (run with ``uv run pytest -m slow tests/unit/test_attacks_faces.py``, about 12
minutes on 2 CPU cores): one NoDef target, the evaluation model, the GMI prior and both attacks,
with the pipeline's default CPU settings except DeepInversion's budget, which is the authors'
2000 iterations (Yin et al. 2020; the pipeline's CPU default is 200 to fit the 30-minute study).
Thresholds: DeepInversion >= 50 % top-1 AttAcc and GMI >= 4x chance. At 2000 steps DeepInversion
reaches 60.0 / 51.7 / 53.3 % on the study's three NoDef targets (docs/attacks.md). Needs the face
data sets (skipped without them; see tests/_requirements.py).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

DEEPINVERSION_STEPS = 2000  # the authors' iteration count


@pytest.fixture(scope="module")
def nodef_report(tmp_path_factory, shared_datasets):
    from midre.plan import run_pipeline
    from midre.study import PipelineConfig

    cfg = PipelineConfig.from_dict({"data": str(shared_datasets / "att_faces"), "image_size": 64,
                                    "defenses": ["nodef"], "seeds": 1,
                                    "attacks": ["deepinversion", "gmi"], "feature_identities": 0,
                                    "attack_budgets": {"deepinversion": {"steps": DEEPINVERSION_STEPS}}})
    report = run_pipeline(cfg, tmp_path_factory.mktemp("att_faces"))
    return {r["attack"]: r["metrics"] for r in report["results"]}, report


def test_deepinversion_reaches_half_top1_on_att_faces(nodef_report):
    metrics, report = nodef_report
    assert metrics["deepinversion"]["acc"]["mean"] > 80.0  # the target itself is a usable classifier
    assert metrics["deepinversion"]["attacc_top1"]["mean"] >= 50.0


def test_gmi_is_well_above_chance_on_att_faces(nodef_report):
    metrics, report = nodef_report
    chance = 100.0 / report["dataset"]["identities"]
    assert metrics["gmi"]["attacc_top1"]["mean"] >= 4 * chance
