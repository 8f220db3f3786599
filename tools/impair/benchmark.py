"""Goodput of sandnet and of the Linux kernel through the impairment relay.

Runs, for each congestion control (CUBIC, NewReno) and direction, one
transfer between two Linux kernels and one between sandnet and a Linux peer,
through the same seeded impairment, checks the sha256 of every transfer and
prints a Markdown table. Needs root. Example:

    sudo .venv/bin/python tools/impair/benchmark.py --size-mb 50

The defaults are the impairment under which sandnet's transfers must
complete: 5% loss, 25% reordering, 1% duplication and 0.1% bit flips per frame.
"""

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import impair  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0, help="megabytes (10**6 bytes) per transfer")
    parser.add_argument("--loss", type=float, default=0.05, help="probability of loss per frame, 0 to 1")
    parser.add_argument("--reorder", type=float, default=0.25, help="probability of reordering per frame")
    parser.add_argument("--duplicate", type=float, default=0.01, help="probability of duplication per frame")
    parser.add_argument("--corrupt", type=float, default=0.001, help="probability of a bit flip per frame")
    parser.add_argument("--seed", type=int, default=7, help="seed of the relay's random generator")
    args = parser.parse_args()
    size = int(args.size_mb * 1e6)
    impairment = impair.Impairment(loss=args.loss, reorder=args.reorder, duplicate=args.duplicate,
                                   corrupt=args.corrupt, seed=args.seed)

    print(f"{size} bytes per transfer; loss {args.loss}, reorder {args.reorder} (held {impairment.reorder_ms} ms), "
          f"duplicate {args.duplicate}, corrupt {args.corrupt}, seed {args.seed}; kernel {platform.release()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    print("| stack | congestion control | direction | goodput | time | sha256 match |")
    print("|---|---|---|---|---|---|")
    failures = 0

    def report(stack: str, case: tuple[str, str], result: impair.TransferResult) -> None:
        nonlocal failures
        ok = result.received_bytes == result.sent_bytes == size and result.received_sha256 == result.sent_sha256
        failures += not ok
        print(f"| {stack} | {case[0]} | {case[1]} | {result.goodput_mbit:.1f} Mbit/s | {result.seconds:.1f} s "
              f"| {'yes' if ok else 'NO'} |", flush=True)

    cases = [(algorithm, direction) for algorithm in ("cubic", "reno") for direction in ("download", "upload")]
    with impair.impaired_path(impairment) as path:
        # The kernel runs first: linkd takes the sandbox's addresses away from the kernel.
        for case in cases:
            report("Linux", case, impair.kernel_transfer(path, case[1], size, case[0]))
        with impair.sandnet_on(path) as client:
            for case in cases:
                report("sandnet", case, impair.sandnet_transfer(path, client, case[1], size, case[0]))
        print(f"relay counters: {path.stop_relay()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
