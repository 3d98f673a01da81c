"""The paper's tables' shapes (``blindfed study federation``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_tune import _never  # noqa: E402


def test_the_study_fills_both_tables_and_resumes(tmp_path, monkeypatch):
    from blindfed.experiments import study

    cfg = study.StudyConfig(
        out=str(tmp_path / "s"),
        owners=2,
        alphas=(1.0,),
        owner_counts=(3,),
        rounds=1,
        train_samples=120,
        test_samples=40,
        baseline_epochs=1,
    )
    report = study.run_study(cfg, progress=lambda _: None)
    # Table 1: 3 centralised cells + 5 methods x 1 alpha; Table 3: 3 methods x 1 count.
    assert len(report["cells"]) == 3 + 5 + 3
    assert all(0 <= c["accuracy"] <= 100 for c in report["cells"])
    tables = (tmp_path / "s" / "study.md").read_text()
    assert "| BlindFed without block sampling | - |" in tables and "K = 3" in tables
    assert (tmp_path / "s" / "study.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(study, "_cell", _never)
    assert study.run_study(cfg, progress=lambda _: None)["cells"] == report["cells"]
