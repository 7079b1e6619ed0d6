"""The MLflow tracking server on a real PostgreSQL (Debian's postgresql, started here with initdb/pg_ctl
in a temp folder): 8 processes logging runs, params, metric histories and artifacts at once lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from genexflow.stack.mlflow_server import MlflowServer, redact, sqlalchemy_uri
from genexflow.stack.postgres import PostgresServer, find_pg_bin

N_PROCS, RUNS_PER_PROC, STEPS = 8, 3, 20

# Each worker waits for the go-file so that all 8 hit the server together. It speaks MLflow's REST API
# with the standard library (what every MLflow client sends), so 8 processes start in milliseconds
# instead of importing mlflow 8 times on 2 cores; the parent then reads everything back with MlflowClient.
WORKER = r"""
import json, sys, time, urllib.request
from pathlib import Path

url, exp_id, worker, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
runs, steps = int(sys.argv[5]), int(sys.argv[6])

def call(method, path, body=None, data=None):
    payload = data if data is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=payload, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        text = resp.read()
    return json.loads(text) if text else {}

while not go.exists():
    time.sleep(0.01)
ids = []
for r in range(runs):
    now = int(time.time() * 1000)
    run = call("POST", "/api/2.0/mlflow/runs/create", {
        "experiment_id": exp_id, "start_time": now,
        "tags": [{"key": "worker", "value": str(worker)}, {"key": "rep", "value": str(r)}]})["run"]
    rid = run["info"]["run_id"]
    for i in range(5):
        call("POST", "/api/2.0/mlflow/runs/log-parameter", {"run_id": rid, "key": f"p{i}", "value": f"{worker}-{r}-{i}"})
    for s in range(steps):
        call("POST", "/api/2.0/mlflow/runs/log-metric", {"run_id": rid, "key": "loss",
             "value": worker * 1000 + r * 100 + s, "timestamp": now, "step": s})
    call("POST", "/api/2.0/mlflow/runs/log-batch", {"run_id": rid,
         "metrics": [{"key": f"m{s}", "value": float(s), "timestamp": now, "step": 0} for s in range(steps)],
         "params": [{"key": "batch", "value": "yes"}]})
    # proxied artifact upload: mlflow-artifacts:/<exp>/<run>/artifacts/<file>
    art = run["info"]["artifact_uri"].split("mlflow-artifacts:/", 1)[1].lstrip("/")
    call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{art}/w{worker}r{r}.txt", data=f"{worker}/{r}".encode())
    call("POST", "/api/2.0/mlflow/runs/update", {"run_id": rid, "status": "FINISHED",
                                                 "end_time": int(time.time() * 1000)})
    ids.append(rid)
print(json.dumps(ids))
"""


@pytest.fixture(scope="module")
def pg_mlflow(tmp_path_factory):
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb/pg_ctl) not installed: apt-get install -y postgresql "
                    "(make sysdeps does it when run as root)")
    pg = PostgresServer().start()
    try:
        url = pg.create_database("mlflow")
        srv = MlflowServer(tmp_path_factory.mktemp("mlflow"), url, workers=2).start()
    except BaseException:
        pg.stop()
        raise
    yield pg, srv
    srv.stop()
    pg.stop()


def test_postgres_helper_urls_and_redaction():
    pg = PostgresServer(port=5999)
    assert pg.url("db").startswith(f"postgresql://genexflow:{pg.password}@127.0.0.1:5999/")
    assert pg.password not in redact(pg.url("db")) and "***@127.0.0.1:5999/db" in redact(pg.url("db"))
    assert sqlalchemy_uri(pg.url("db")).startswith("postgresql+psycopg2://")
    assert sqlalchemy_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_the_database_password_is_on_no_command_line(pg_mlflow):
    """``ps`` shows every user the command lines: the password of the backend store must be on none of the
    server's processes (it reaches the server through its private environment)."""
    import psutil

    pg, srv = pg_mlflow
    server = psutil.Process(srv.pid)
    procs = [server, *server.children(recursive=True)]
    assert len(procs) >= 2  # the server and its workers
    for proc in procs:
        assert pg.password not in " ".join(proc.cmdline()), proc.cmdline()
    assert pg.password in server.environ()["MLFLOW_BACKEND_STORE_URI"]


def test_eight_concurrent_writers_lose_nothing(pg_mlflow, tmp_path):
    from mlflow.tracking import MlflowClient

    pg, srv = pg_mlflow
    assert srv.environment()["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert srv.url.startswith("http://127.0.0.1:")
    client = MlflowClient(srv.url)
    exp_id = client.create_experiment(f"concurrency-{time.time_ns()}")
    go = tmp_path / "go"
    env = dict(os.environ, TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, srv.url, exp_id, str(w), str(go),
                               str(RUNS_PER_PROC), str(STEPS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for w in range(N_PROCS)]
    time.sleep(1.0)
    go.touch()
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        ids += json.loads(out.strip().splitlines()[-1])
    assert len(set(ids)) == N_PROCS * RUNS_PER_PROC

    runs = client.search_runs([exp_id], max_results=1000)
    assert {r.info.run_id for r in runs} == set(ids)
    for run in runs:
        w, r = int(run.data.tags["worker"]), int(run.data.tags["rep"])
        assert run.info.status == "FINISHED"
        assert run.data.params == {**{f"p{i}": f"{w}-{r}-{i}" for i in range(5)}, "batch": "yes"}
        assert {k: v for k, v in run.data.metrics.items() if k.startswith("m")} == {
            f"m{s}": float(s) for s in range(STEPS)}
        hist = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        assert [m.value for m in hist] == [w * 1000 + r * 100 + s for s in range(STEPS)]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"w{w}r{r}.txt"]

    # the rows are in PostgreSQL itself, not in some fallback store
    import psycopg2

    conn = psycopg2.connect(pg.url("mlflow"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s", (int(exp_id),))
            assert cur.fetchone()[0] == N_PROCS * RUNS_PER_PROC
            cur.execute("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                        "WHERE r.experiment_id = %s AND m.key = 'loss'", (int(exp_id),))
            assert cur.fetchone()[0] == N_PROCS * RUNS_PER_PROC * STEPS
    finally:
        conn.close()


def test_postgres_listens_on_loopback_only_and_stops(pg_mlflow):
    import psutil

    pg, _ = pg_mlflow
    listen = [c.laddr for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == pg.port]
    assert listen and {a.ip for a in listen} == {"127.0.0.1"}
