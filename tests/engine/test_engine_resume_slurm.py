"""A requeued SLURM job finds its own run folder and continues from its last.pt (resume=auto)."""

from yolotrain.config import resolve
from yolotrain.engine.resume import ELASTIC_MARKER, elastic_resume, mark_elastic_run


def test_requeued_slurm_job_continues_its_own_run(tmp_path, monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    mine, other = tmp_path / "exp3", tmp_path / "exp7"
    for folder in (mine, other):
        (folder / "weights").mkdir(parents=True)
        (folder / "weights" / "last.pt").write_bytes(b"x")
    mark_elastic_run(mine)
    (other / ELASTIC_MARKER).write_text("slurm:999")  # another job's run
    cfg = resolve({"data": "d.yaml", "project": str(tmp_path)})
    assert elastic_resume(cfg).resume == ""  # the first start: nothing to continue
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM sets it on a requeued job
    assert elastic_resume(cfg).resume == str(mine / "weights" / "last.pt")
    monkeypatch.setenv("SLURM_JOB_ID", "5555")
    assert elastic_resume(cfg).resume == ""  # a job with no run of its own starts fresh
