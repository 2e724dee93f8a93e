"""adam_lit.distributed on 2 MPI ranks: tests/mpi_cases.py run under mpirun, with a timeout (a rank that hangs fails
the test instead of the run). Skipped, with the reason, where mpirun or mpi4py is missing (CI installs both)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from adam_lit._optional import required

CASES = os.path.join(os.path.dirname(__file__), "mpi_cases.py")

def _mpirun():
    exe = shutil.which("mpirun")
    if exe is None: return None, "mpirun not found (Debian: apt install openmpi-bin libopenmpi-dev)"
    try: import mpi4py  # noqa: F401
    except ImportError: return None, "mpi4py not installed (pip install \"adam-lit[mpi]\")"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    flags = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version else []
    return [exe, *flags], None

MPIRUN, WHY = _mpirun()
# CI (ADAM_LIT_REQUIRE_ORACLES=1, or the older ADAM_LIT_REQUIRE_MPI=1): a missing MPI is a failure, not a skip
if MPIRUN is None and (os.environ.get("ADAM_LIT_REQUIRE_MPI") or required()):
    raise RuntimeError(f"ADAM_LIT_REQUIRE_ORACLES / ADAM_LIT_REQUIRE_MPI is set but {WHY}")
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason=WHY or "")

def run_ranks(case: str, n: int = 2, timeout: int = 300) -> list:
    "Run one case of mpi_cases.py on `n` ranks; the checks rank 0 reports (every rank's verdict)."
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONWARNINGS="ignore")
    p = subprocess.run([*MPIRUN, "-n", str(n), sys.executable, CASES, case], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert p.returncode == 0, f"mpirun exited with {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no checks reported:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return rows

@needs_mpi
@pytest.mark.parametrize("case", ["exact", "dtypes", "modes", "errors", "robust", "checkpoint", "counts", "sparse_counts",
                                  "nan_agree", "load_digest", "timed", "exclusions", "load_refuses",
                                  "build_refusals"])
def test_two_ranks(case):
    rows = run_ranks(case)
    bad = [r for r in rows if r["ok"] != [True, True]]
    assert not bad, "\n".join(f"{r['check']}: {r['ok']} {r.get('detail', '')[:2000]}" for r in bad)

@needs_mpi
@pytest.mark.parametrize("case", ["exact", "dtypes", "modes", "sparse_counts", "robust", "timed", "exclusions",
                                  "build_refusals"])
def test_three_ranks(case):
    "3 ranks: unequal shards (5 rows as 1+2+2, 1 row on one rank only), sums in rank order ((g0 + g1) + g2)."
    rows = run_ranks(case, n=3)
    bad = [r for r in rows if r["ok"] != [True] * 3]
    assert not bad, "\n".join(f"{r['check']}: {r['ok']} {r.get('detail', '')[:2000]}" for r in bad)

def _kill_session(sid: int):
    "SIGKILL every process of session `sid`: mpirun and the ranks it started (each in its own process group)."
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not d.isdigit(): continue
        try:
            with open(f"/proc/{d}/stat") as f: fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid: os.kill(int(d), signal.SIGKILL)
        except (OSError, ValueError, IndexError): pass
    try: os.killpg(sid, signal.SIGKILL)
    except OSError: pass

def run_fault(case: str, module: bool = False, timeout: int = 40) -> dict:
    """Run a case of mpi_cases.py that ends the job (FAULTS) on 2 ranks, as `mpirun -n 2 python [-m mpi4py] script`.
    A job that outlives `timeout` is killed, every rank included, and reported as hung (the test itself never hangs)."""
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONWARNINGS="ignore")
    cmd = [*MPIRUN, "-n", "2", sys.executable, *(["-m", "mpi4py"] if module else []), CASES, case]
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        _kill_session(p.pid)
        out, err = p.communicate()
        hung = True
    return {"rc": p.returncode, "seconds": time.monotonic() - t, "hung": hung, "rows": _objects(out), "out": out, "err": err,
            "end": time.time()}

def _objects(text: str) -> list:
    "The JSON objects in the ranks' output (two ranks' lines may arrive joined)."
    rows, dec = [], json.JSONDecoder()
    for line in text.splitlines():
        k = line.find("{")
        while k >= 0:
            try: obj, k = dec.raw_decode(line, k)
            except ValueError: break
            rows.append(obj)
            k = line.find("{", k)
    return rows

def _report(r) -> str:
    return f"rc={r['rc']} after {r['seconds']:.1f} s (hung: {r['hung']})\n{r['out'][-2000:]}\n{r['err'][-3000:]}"

@needs_mpi
@pytest.mark.parametrize("module", [False, True], ids=["python script", "python -m mpi4py script"])
def test_uncaught_exception_ends_the_job(module):
    "Rank 1 raises in user code while rank 0 enters the next step: the job ends within seconds, with a non-zero exit."
    r = run_fault("user_raise", module=module, timeout=30)
    assert not r["hung"] and r["rc"] != 0, _report(r)
    raised = [row["time"] for row in r["rows"] if row["check"] == "rank 1 raises"]
    assert raised and r["end"] - raised[0] < 10, _report(r)                 # seconds from the failure to the end of the job
    assert "a failure in user code on rank 1" in r["err"], _report(r)        # the traceback is printed first
    assert not [row for row in r["rows"] if not row["ok"]], _report(r)

@needs_mpi
@pytest.mark.parametrize("how", ["stopped", "exited", "caught"])
def test_lost_rank_times_out(how):
    """With `MPICommunicator(timeout=3)`: a rank 1 s late is waited for; a rank stopped by SIGSTOP (or one whose script
    ended) before a step makes rank 0 raise DistributedError after 3 s, and the job ends: through the uncaught error,
    or ("caught") when rank 0 catches it and its script ends (MPI_Finalize would wait for the lost collective)."""
    r = run_fault(how, timeout=40)
    assert not r["hung"] and r["rc"] != 0, _report(r)
    zero = [row for row in r["rows"] if row["rank"] == 0]
    names = [row["check"] for row in zero]
    assert any("DistributedError after the timeout" in n for n in names), _report(r)
    assert any("refuses any further collective" in n for n in names), _report(r)
    assert all(row["ok"] for row in r["rows"]), _report(r)
    assert how != "caught" or "rank 0 caught the error and leaves" in names, _report(r)
    assert r["seconds"] < 30, _report(r)
