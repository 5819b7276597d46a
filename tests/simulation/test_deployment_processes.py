"""``LocalConsortium.kill`` reaches the processes Flower detaches into sessions of their own."""

import subprocess
import sys
import time

from simulation.deployment import LocalConsortium, descendants

# a parent that starts a grandchild in a new session (as Flower starts its ServerApp) and prints its pid
PARENT = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kill_stops_a_grandchild_in_another_session(tmp_path):
    c = LocalConsortium(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True)
    c.procs["parent"] = proc
    grandchild = int(proc.stdout.readline())
    assert grandchild in descendants(proc.pid)
    c.kill("parent")
    deadline = time.time() + 10
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)
    assert descendants(proc.pid) == []
