"""adam_lit.distributed on 2 MPI ranks: tests/mpi_cases.py run under mpirun, with a timeout (a rank that hangs fails
the test instead of the run). Skipped, with the reason, where mpirun or mpi4py is missing (CI installs both)."""
import json
import os
import shutil
import subprocess
import sys

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
@pytest.mark.parametrize("case", ["exact", "dtypes", "modes", "errors", "robust", "checkpoint", "counts", "sparse_counts"])
def test_two_ranks(case):
    rows = run_ranks(case)
    bad = [r for r in rows if r["ok"] != [True, True]]
    assert not bad, "\n".join(f"{r['check']}: {r['ok']} {r.get('detail', '')[:2000]}" for r in bad)

@needs_mpi
@pytest.mark.parametrize("case", ["exact", "dtypes", "modes", "sparse_counts", "robust"])
def test_three_ranks(case):
    "3 ranks: unequal shards (5 rows as 1+2+2, 1 row on one rank only), sums in rank order ((g0 + g1) + g2)."
    rows = run_ranks(case, n=3)
    bad = [r for r in rows if r["ok"] != [True] * 3]
    assert not bad, "\n".join(f"{r['check']}: {r['ok']} {r.get('detail', '')[:2000]}" for r in bad)
