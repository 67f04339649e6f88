"""The orchestrator on the cluster (workflows/launch.py): with `launch.ray_jobs` naming a cluster's
job server, the bootstrap's Dagster assets submit each training job and the CapFilt run as a Ray
job through dagster-ray's Pipes client, on a real multi-node cluster on this machine
(tests/cluster.py). The Dagster process runs none of them itself (doing so fails the test); each
job ends SUCCEEDED on the job server under its asset's name and its Dagster run's id; CapFilt's
model actors run on the worker nodes; the results come back through Pipes into the assets'
metadata, and the job logs into the Dagster run's output."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from tests.cluster import actors_by_node, cluster  # noqa: F401
from tests.test_demo import _miniature

STAGE = "CapFiltStage"
ASSETS = ["web_data", "round0_pretrain", "round0_captioner", "round0_filter", "round0_capfilt"]


def _on_the_cluster(tmp_path: Path, job_server: str) -> Path:
    path = _miniature(tmp_path, rounds=2)
    config = yaml.safe_load(path.read_text())
    config["launch"] = {"ray_jobs": job_server, "python": sys.executable, "poll_seconds": 0.5}
    # Ray Train's worker group costs ~25 s a job to start: the training jobs train inside their Ray
    # job's driver here (Ray Train on the cluster, node loss included, is tests/test_train.py's)
    config["train"]["compute"]["launcher"] = "local"
    # 1.5 CPUs per model actor: only a worker node (2 CPUs) holds one, so the two spread over both
    config["capfilt"]["compute"]["actor_cpus"] = 1.5
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_assets_submit_their_jobs_to_the_cluster_and_get_their_results_back(cluster, tmp_path, monkeypatch,
                                                                                capfd):
    import dagster as dg
    from ray.job_submission import JobStatus, JobSubmissionClient

    import pipeline.run
    import workflows.train
    from demo.bootstrap import embedding
    from demo.config import load
    from pipeline import manifest as mf
    from workflows.dagster_defs import round_assets

    def in_the_dagster_process(*args, **kwargs):
        raise AssertionError("a job ran in the Dagster process instead of on the cluster")

    monkeypatch.setattr(workflows.train, "train", in_the_dagster_process)
    monkeypatch.setattr(pipeline.run, "run", in_the_dagster_process)
    demo = load(_on_the_cluster(tmp_path, cluster.job_server))
    cfg = demo.bootstrap
    assets, _ = round_assets(cfg, embedding(demo))
    before = actors_by_node(STAGE)

    result = dg.materialize(assets, selection=ASSETS, instance=dg.DagsterInstance.ephemeral())
    assert result.success

    # every job on the job server: one per asset that has Ray work, under the Dagster run's id
    client = JobSubmissionClient(cluster.job_server)
    jobs = {j.metadata.get("capfilt_job"): j for j in client.list_jobs() if j.metadata.get("capfilt_job")}
    out = Path(cfg.out)
    assert set(jobs) == {"round0_pretrain", "round0_captioner", "round0_filter", str(out / "round0_capfilt")}, jobs
    for name, job in jobs.items():
        assert job.status == JobStatus.SUCCEEDED, (name, job.message)
        assert job.metadata.get("dagster/run-id") == result.run_id, job.metadata
        assert job.entrypoint == f"{sys.executable} -m workflows.ray_job"

    # CapFilt's model actors ran on the worker nodes, one on each
    placed = {n: ids - before.get(n, set()) for n, ids in actors_by_node(STAGE).items() if ids - before.get(n, set())}
    assert set(placed) == {cluster.node_id("node_a"), cluster.node_id("node_b")}, placed

    # the results came back through Pipes: the models the jobs wrote, CapFilt's manifest as metadata
    pretrained = result.output_for_node("round0_pretrain")
    assert pretrained == str(out / "train" / "round0_pretrain" / "model")
    history = json.loads((Path(pretrained) / "history.json").read_text())
    assert history["steps"] == cfg.optim("pretrain").steps
    counts = mf.read(str(out / "round0_capfilt"))["counts"]
    assert counts["rows_in"] == counts["kept"] + counts["dropped"] + counts["failed"] + counts.get("duplicates", 0)
    assert counts["rows_in"] == demo.demo.world.web
    meta = result.asset_materializations_for_node("round0_capfilt")[0].metadata
    assert {k: meta[k].value for k in ("rows_in", "kept", "dropped", "failed")} == {
        k: counts[k] for k in ("rows_in", "kept", "dropped", "failed")}
    # ...and each job's log lines reached the Dagster process (forwarded by the Pipes reader)
    logged = capfd.readouterr().out
    assert logged.count("-m workflows.ray_job") >= len(jobs), logged[-2000:]
