"""The fuzzers of tests/test_fuzz.py run long: the same strategies and targets, many more
inputs, a random seed each run (printed, so a failure replays). For each target: inputs run,
time, inputs per second, how the inputs ended, and any failure (an error that is not the
project's own, or a hang), shrunk to its smallest input by hypothesis.

Run: .venv/bin/python bench/bench_fuzz.py [--scale 10] [--examples N] [--seed S] [TARGET ...]
     (or CLOUDVMI_FUZZ_SCALE / CLOUDVMI_FUZZ_EXAMPLES; no guest, one core)
"""

import argparse
import os
import random
import resource
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..")]

from fuzz_targets import TARGETS, fuzz  # noqa: E402

from report import Report  # noqa: E402

MEMORY_HEADROOM = 3 << 30  # an input that makes a parser allocate past this is a failure


def _limit_memory() -> None:
    """Make unbounded allocation a MemoryError (a failure) instead of a swapping machine."""
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, resource.RLIM_INFINITY))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"of: {', '.join(TARGETS)}")
    parser.add_argument("--scale", type=float,
                        default=float(os.environ.get("CLOUDVMI_FUZZ_SCALE", 10)),
                        help="inputs per target, as a multiple of the CI run's (default 10)")
    parser.add_argument("--examples", type=int,
                        default=int(os.environ.get("CLOUDVMI_FUZZ_EXAMPLES", 0)) or None,
                        help="inputs per target (overrides --scale)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    names = args.targets or list(TARGETS)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    _limit_memory()
    report = Report("fuzz")
    per = str(args.examples) if args.examples else f"{args.scale:g} x the CI run's"
    print(f"CloudVMI fuzzers, seed {seed} (replay: --seed {seed}), {per} inputs a target")
    failures = 0
    started = time.perf_counter()
    cpu = time.process_time()
    for name in names:
        target = TARGETS[name]
        examples = args.examples or int(target.ci_examples * args.scale)
        failure = ""
        t0 = time.perf_counter()
        try:
            fuzz(target, examples, derandomize=False, seed=seed)
        except Exception as exc:  # hypothesis has printed the shrunk input already
            failures += 1
            failure = f"{type(exc).__name__}: {str(exc)[:160]}"
            traceback.print_exc(limit=-8)
        seconds = time.perf_counter() - t0
        ran = sum(target.outcomes.values())
        ended = ", ".join(f"{k} {v}" for k, v in target.outcomes.most_common())
        report.add(f"{name}: inputs run", ran, "inputs", note=f"({ended})")
        report.add(f"{name}: time", seconds, "s")
        report.add(f"{name}: rate", ran / seconds, "in/s")
        report.add(f"{name}: failures", 1 if failure else 0, "", "0", not failure, failure)
    report.add("all targets: wall time", time.perf_counter() - started, "s")
    report.add("all targets: CPU time", time.process_time() - cpu, "s")
    print(f"saved {report.save()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
