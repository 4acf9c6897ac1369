#!/usr/bin/env python3
"""Python multiprocessing peers, on the same workloads and with the same protocol as the C++
programs: `python3 python_peers.py [--quick] [--reps N] [FILTER]` prints one JSON object per line
and repetition. Start method `fork`. Two-process runs pin the sides to cores 0 and 1 (the Manager's
server counts as a side); Pool and ProcessPoolExecutor workers are left unpinned.

Every consumer checks what it receives (sequence numbers, sums, lengths); a repetition that
takes longer than REP_TIMEOUT_S is interrupted and its children are killed.
"""
import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import shared_memory
from multiprocessing.connection import wait as mp_wait

CTX = mp.get_context("fork")
CORES = sorted(os.sched_getaffinity(0))
REP_TIMEOUT_S = 60
now = time.perf_counter  # CLOCK_MONOTONIC on Linux: comparable across processes


def pin(i, pid=0):
    """Pin process `pid` (0: this one) to core i mod cores; nothing to pin on one core."""
    if len(CORES) >= 2:
        os.sched_setaffinity(pid, {CORES[i % len(CORES)]})


class Check(Exception):
    pass


class RepTimeout(Exception):
    pass


def check(ok, what):
    if not ok:
        raise Check(what)


def run_procs(bodies, span_slots=1):
    """Run each body(index, span) in a child pinned to core index, all released together.
    Returns the span array: span[2k], span[2k+1] = start, end written by the bodies."""
    span = CTX.Array("d", 2 * span_slots, lock=False)
    barrier = CTX.Barrier(len(bodies) + 1)

    def main(i, body):
        pin(i)
        barrier.wait()
        body(i, span)

    procs = [CTX.Process(target=main, args=(i, b), daemon=True) for i, b in enumerate(bodies)]
    for p in procs:
        p.start()
    barrier.wait()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    check(not bad, f"child exit codes {bad}")
    return span


def elapsed(span, slots):
    return max(span[2 * k + 1] for k in range(slots)) - min(span[2 * k] for k in range(slots))


def stamped(i, size):
    """A `size`-byte message carrying i in its first 8 bytes."""
    return i.to_bytes(8, "little") + PAD[: size - 8]


PAD = bytes(range(256)) * 4


# ------------------------------------------------------------------------------------------
# Pipe and Queue


def channel_throughput(kind, n, size):
    """Messages per second from a producer to a consumer; size None sends small ints, else bytes
    objects of that size. Timed at the consumer."""
    if kind == "pipe":
        r, w = CTX.Pipe(duplex=False)
        send, recv = w.send, r.recv
    else:
        q = CTX.Queue()
        send, recv = q.put, q.get

    def producer(i, span):
        for k in range(n):
            send(k if size is None else stamped(k, size))
        if kind == "queue":
            q.close()
            q.join_thread()  # everything is flushed to the pipe before we exit

    def consumer(i, span):
        span[0] = now()
        for k in range(n):
            x = recv()
            if size is None:
                check(x == k, "wrong message")
            else:
                check(len(x) == size and int.from_bytes(x[:8], "little") == k, "wrong message")
        span[1] = now()

    span = run_procs([producer, consumer])
    return n / elapsed(span, 1)


def queue_2p2c_throughput(n):
    """Messages per second through one Queue: 2 producers send n (producer, seq) tuples in total,
    then a None each; 2 consumers check that each producer's numbers rise and that the sum is
    right. Process i on core i mod cores (as peers/queue_load.hpp)."""
    q = CTX.Queue()
    each = n // 2
    sums = CTX.Array("q", 2, lock=False)
    counts = CTX.Array("q", 2, lock=False)

    def producer(i, span):
        for k in range(each):
            q.put((i, k))
        q.put(None)
        q.close()
        q.join_thread()

    def consumer(i, span):
        c = i - 2
        last = [-1, -1]
        got = total = 0
        span[2 * c] = now()
        while True:
            x = q.get()
            if x is None:
                break
            p, k = x
            check(k > last[p], "out of order")
            last[p] = k
            got += 1
            total += k
        span[2 * c + 1] = now()
        sums[c], counts[c] = total, got

    span = run_procs([producer, producer, consumer, consumer], span_slots=2)
    check(sum(counts) == 2 * each and sum(sums) == 2 * (each * (each - 1) // 2),
          "messages lost or duplicated")
    return 2 * each / elapsed(span, 2)


def rtt_us(kind, n):
    """Round trip of a small int: through a duplex Pipe, or through one Queue and back through
    another."""
    if kind == "pipe":
        a, b = CTX.Pipe()
        out, back_in, there_in, back_out = a.send, a.recv, b.recv, b.send
    else:
        there, back = CTX.Queue(), CTX.Queue()
        out, back_in, there_in, back_out = there.put, back.get, there.get, back.put

    def pinger(i, span):
        span[0] = now()
        for k in range(n):
            out(k)
            check(back_in() == k, "wrong echo")
        span[1] = now()

    def ponger(i, span):
        for _ in range(n):
            back_out(there_in())

    return elapsed(run_procs([pinger, ponger]), 1) / n * 1e6


def wait_rtt_us(n, idle):
    """Round trip of 8 raw bytes (send_bytes / recv_bytes) through a duplex Pipe, as mpp's
    wait.rtt: with idle > 0 each side first blocks in multiprocessing.connection.wait over its end
    and the receiving ends of `idle` idle Pipes (all kept open, so none reads as closed)."""
    a, b = CTX.Pipe()
    spare = [CTX.Pipe() for _ in range(idle)]

    def waits(end):
        objects = [end] + [r for r, _ in spare]
        return lambda: check(mp_wait(objects, 10) == [end], "wrong ready set (or 10 s passed)")

    def pinger(i, span):
        ready = waits(a) if idle else None
        span[0] = now()
        for k in range(n):
            a.send_bytes(k.to_bytes(8, "little"))
            if ready:
                ready()
            check(int.from_bytes(a.recv_bytes(), "little") == k, "wrong echo")
        span[1] = now()

    def ponger(i, span):
        ready = waits(b) if idle else None
        for _ in range(n):
            if ready:
                ready()
            b.send_bytes(b.recv_bytes())

    try:
        return elapsed(run_procs([pinger, ponger]), 1) / n * 1e6
    finally:
        for c in [a, b] + [c for p in spare for c in p]:
            c.close()


# ------------------------------------------------------------------------------------------
# Value


def lock_uncontended_ns(n):
    """multiprocessing.Lock acquire + release in one process."""
    lock = CTX.Lock()
    t0 = now()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return (now() - t0) * 1e9 / n


def lock_contended_ops(n_each):
    """with lock: x.value += 1 from 2 processes (x a RawValue), total ops/s."""
    lock = CTX.Lock()
    x = CTX.RawValue("q", 0)

    def body(i, span):
        span[2 * i] = now()
        for _ in range(n_each):
            with lock:
                x.value += 1
        span[2 * i + 1] = now()

    span = run_procs([body, body], span_slots=2)
    check(x.value == 2 * n_each, "lost increment")
    return 2 * n_each / elapsed(span, 2)


def value_locked_increment(n_each):
    v = CTX.Value("q", 0)

    def body(i, span):
        span[2 * i] = now()
        for _ in range(n_each):
            with v.get_lock():
                v.value += 1
        span[2 * i + 1] = now()

    span = run_procs([body, body], span_slots=2)
    check(v.value == 2 * n_each, "lost increment")
    return 2 * n_each / elapsed(span, 2)


# ------------------------------------------------------------------------------------------
# Manager


def manager_ops(what, n):
    """ops/s of one child doing n operations on a Manager proxy (server on core 1, child on 0)."""
    with CTX.Manager() as mgr:
        pin(1, mgr._process.pid)
        d = mgr.dict()
        lst = mgr.list()
        if what == "get":
            d.update({k: k * 3 + 1 for k in range(n)})

        def body(i, span):
            span[0] = now()
            if what == "set":
                for k in range(n):
                    d[k] = k * 3 + 1
            elif what == "get":
                for k in range(n):
                    check(d[k] == k * 3 + 1, "wrong value")
            else:
                for k in range(n):
                    lst.append(k)
            span[1] = now()

        span = run_procs([body])
        if what == "append":
            check(lst[:] == list(range(n)), "wrong list")
        else:
            check(len(d) == n and d[n // 2] == (n // 2) * 3 + 1, "wrong dict")
        return n / elapsed(span, 1)


# ------------------------------------------------------------------------------------------
# Pool, ProcessPoolExecutor, Process


def plus_one(x):
    return x + 1


def pool_map(n):
    with CTX.Pool(2) as pool:
        pool.map(plus_one, range(4))  # workers up before the clock starts
        t0 = now()
        out = pool.map(plus_one, range(n))
        t = now() - t0
    check(len(out) == n and sum(out) == n * (n + 1) // 2, "wrong results")
    return n / t


def pool_startup_ms():
    """Pool(2) made, first map of 2 items done (so the workers really run), closed and joined."""
    t0 = now()
    pool = CTX.Pool(2)
    out = pool.map(plus_one, [1, 2])
    pool.close()
    pool.join()
    t = now() - t0
    check(out == [2, 3], "wrong results")
    return t * 1e3


def executor_map(n):
    with ProcessPoolExecutor(2, mp_context=CTX) as ex:
        list(ex.map(plus_one, range(4)))  # workers up before the clock starts
        t0 = now()
        out = list(ex.map(plus_one, range(n)))
        t = now() - t0
    check(len(out) == n and sum(out) == n * (n + 1) // 2, "wrong results")
    return n / t


def noop():
    pass


def sleep_ms(ms):
    time.sleep(ms / 1000)
    return ms


def first_completed_us(k):
    """Submit a no-op call next to a running 1 s one; µs until wait(FIRST_COMPLETED) returns."""
    with ProcessPoolExecutor(2, mp_context=CTX) as ex:
        list(ex.map(plus_one, range(4)))  # workers up before the clock starts
        sleeper = ex.submit(sleep_ms, 1000)
        time.sleep(0.05)  # the sleeper is running
        total = 0.0
        for _ in range(k):
            t0 = now()
            f = ex.submit(plus_one, 1)
            done, _ = wait([sleeper, f], return_when=FIRST_COMPLETED)
            total += now() - t0
            check(f in done and f.result() == 2 and not sleeper.done(), "wrong first completed")
        sleeper.result()
    return total / k * 1e6


def pool_mixed(metric):
    """Pool(2): sleeps of 300, 50 and 150 ms; the makespan or the mean submission-to-callback ms."""
    with CTX.Pool(2) as pool:
        pool.map(plus_one, range(4))  # workers up before the clock starts
        done = {}
        t0 = now()
        rs = [pool.apply_async(sleep_ms, (ms,), callback=lambda r: done.__setitem__(r, now()))
              for ms in (300, 50, 150)]
        for r in rs:
            r.get()
    check(sorted(done) == [50, 150, 300], "wrong results")
    ends = [t - t0 for t in done.values()]
    return (max(ends) if metric == "makespan" else sum(ends) / len(ends)) * 1e3


def process_start_us(k):
    t0 = now()
    for _ in range(k):
        p = CTX.Process(target=noop)
        p.start()
        p.join()
        check(p.exitcode == 0, "child failed")
    return (now() - t0) / k * 1e6


# ------------------------------------------------------------------------------------------
# SharedMemory


def shm_us(create, k):
    size = 1 << 20
    made, t = [], 0.0
    try:
        for i in range(k):
            t0 = now()
            s = shared_memory.SharedMemory(create=True, size=size)
            t += now() - t0
            s.buf[i % 1000] = i % 251
            made.append(s)
        if not create:
            t = 0.0
            for i, s in enumerate(made):
                t0 = now()
                a = shared_memory.SharedMemory(name=s.name)
                t += now() - t0
                ok = a.size >= size and a.buf[i % 1000] == i % 251
                a.close()  # 3.11 also registers an attached segment with the resource
                # tracker; that is a no-op here because the creator registered it already.
                check(ok, "wrong contents")
    finally:
        for s in made:
            s.close()
            s.unlink()
    return t / k * 1e6


# ------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("filter", nargs="?")
    opt = ap.parse_args()
    reps = opt.reps or (5 if opt.quick else 7)
    pattern = re.compile(opt.filter) if opt.filter else None

    def n(full, quick):
        return quick if opt.quick else full

    def on_alarm(signum, frame):
        # Not TimeoutError: that is an OSError, which Process.join() swallows in os.waitpid.
        raise RepTimeout(f"timed out after {REP_TIMEOUT_S} s")

    signal.signal(signal.SIGALRM, on_alarm)
    failures = 0

    def run(workload, unit, higher_is_better, measure):
        nonlocal failures
        if pattern and not pattern.search(workload):
            return
        for _ in range(reps):
            signal.alarm(REP_TIMEOUT_S)
            try:
                value = measure()
            except Exception as e:  # a failed check, a dead child, a timeout
                signal.alarm(0)
                for p in mp.active_children():
                    p.kill()
                print(f"{workload}/python: {e!r}", file=sys.stderr)
                print(json.dumps({"workload": workload, "system": "python", "error": repr(e)}),
                      flush=True)
                failures += 1
                return
            signal.alarm(0)
            print(json.dumps({"workload": workload, "system": "python", "value": value,
                              "unit": unit, "higher_is_better": higher_is_better}), flush=True)

    run("pipe.8B.throughput", "msg/s", True, lambda: channel_throughput("pipe", n(200_000, 30_000), None))
    run("pipe.1KiB.throughput", "msg/s", True, lambda: channel_throughput("pipe", n(200_000, 30_000), 1024))
    run("pipe.8B.rtt", "µs", False, lambda: rtt_us("pipe", n(4_000, 500)))
    run("queue.8B.1p1c.throughput", "msg/s", True, lambda: channel_throughput("queue", n(200_000, 30_000), None))
    run("queue.1KiB.1p1c.throughput", "msg/s", True, lambda: channel_throughput("queue", n(200_000, 30_000), 1024))
    run("queue.8B.2p2c.throughput", "msg/s", True, lambda: queue_2p2c_throughput(n(200_000, 30_000)))
    run("queue.8B.rtt", "µs", False, lambda: rtt_us("queue", n(4_000, 500)))
    run("wait.rtt", "µs", False, lambda: wait_rtt_us(n(4_000, 500), 99))
    run("wait.rtt.single", "µs", False, lambda: wait_rtt_us(n(4_000, 500), 0))
    run("lock.uncontended", "ns", False, lambda: lock_uncontended_ns(n(1_000_000, 200_000)))
    run("lock.contended.2proc", "ops/s", True, lambda: lock_contended_ops(n(300_000, 50_000)))
    run("value.locked_increment.2proc", "ops/s", True, lambda: value_locked_increment(n(300_000, 50_000)))
    run("dict.set.1proc", "ops/s", True, lambda: manager_ops("set", n(10_000, 2_000)))
    run("dict.get.1proc", "ops/s", True, lambda: manager_ops("get", n(10_000, 2_000)))
    run("list.append.1proc", "ops/s", True, lambda: manager_ops("append", n(10_000, 2_000)))
    run("pool.map.1e6", "items/s", True, lambda: pool_map(n(1_000_000, 100_000)))
    run("pool.startup", "ms", False, pool_startup_ms)
    run("futures.map.1e4", "items/s", True, lambda: executor_map(n(10_000, 2_000)))
    run("futures.wait.first_completed", "µs", False, lambda: first_completed_us(100))
    run("pool.mixed.makespan", "ms", False, lambda: pool_mixed("makespan"))
    run("pool.mixed.latency", "ms", False, lambda: pool_mixed("latency"))
    run("process.start", "µs", False, lambda: process_start_us(n(50, 10)))
    run("shm.create.1MiB", "µs", False, lambda: shm_us(True, n(200, 50)))
    run("shm.attach.1MiB", "µs", False, lambda: shm_us(False, n(200, 50)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
