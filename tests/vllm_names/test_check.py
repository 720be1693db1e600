#!/usr/bin/env python3
"""check.py on a small made-up vLLM tree: finds what is there, names what is not."""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402

SOURCE = {
    "vllm/v1/core/sched/scheduler.py": """
class SchedulerInterface:
    def __init__(self):
        self.base_attr = 1

class Scheduler(SchedulerInterface):
    max_num_running_reqs: int
    def __init__(self):
        self.running = []
    def schedule(self):
        def inner():
            pass
""",
    "vllm/v1/request.py": """
import enum
class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    DONE = 9
""",
    "vllm-0.0.1.dist-info/METADATA": "Name: vllm\nVersion: 0.0.1\n",
}


def fn(file, qualname, required="all", matching="exact"):
    return {"file": file, "qualname": qualname, "required": required, "matching": matching, "table": "t"}


def main():
    with tempfile.TemporaryDirectory() as tree:
        for rel, text in SOURCE.items():
            os.makedirs(os.path.dirname(os.path.join(tree, rel)), exist_ok=True)
            with open(os.path.join(tree, rel), "w", encoding="utf-8") as f:
                f.write(text)
        sched = "vllm/v1/core/sched/scheduler.py"
        manifest = {
            "functions": [
                fn(sched, "Scheduler.schedule"),
                fn(sched, "Scheduler.schedule.<locals>.inner"),
                fn("*", ".schedule", matching="suffix"),
                fn("vllm/v1/*/sched/scheduler.py", "*.schedule"),
                fn(sched, "Scheduler.gone"),
                fn("vllm/other.py", "X.y", required="any"),
            ],
            "attributes": [
                {"module": sched, "class": "Scheduler", "attr": a}
                for a in ["running", "max_num_running_reqs", "base_attr", "schedule", "gone_attr"]
            ],
            "enums": [
                {"module": "vllm/v1/request.py", "class": "RequestStatus", "member": m, "value": v}
                for m, v in [("WAITING", 1), ("RUNNING", 2), ("DONE", 9), ("RUNNING", 5)]
            ],
        }
        versions, failures = check.check(manifest, [tree])
    expected = [
        "t: vllm/v1/core/sched/scheduler.py Scheduler.gone not found in vLLM 0.0.1",
        "t: vllm/other.py X.y not found in any of vLLM 0.0.1",
        "attribute Scheduler.gone_attr (vllm/v1/core/sched/scheduler.py) not found in vLLM 0.0.1",
        "enum RequestStatus.RUNNING is 2 in vLLM 0.0.1, the bundle assumes 5",
    ]
    assert versions == ["0.0.1"], versions
    assert failures == expected, "\n".join(failures)
    print("check.py self-test: ok (4 planted misses found, 11 present names passed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
