"""The one list of benchmark workloads: what each measures, its unit, which systems report on it,
and whether mpp is expected to. `benchmarks/run` shows an expected system that reported nothing
as `missing`, so a workload mpp cannot run yet is visible, not silently skipped.

To add a workload: add a line here, then print it from a program (see README.md). A program may
print workloads that are not listed; the harness shows them and warns.
"""
from dataclasses import dataclass

# System names used in result lines, and what each one is.
SYSTEMS = {
    "mpp": "this library (benchmarks/mpp/*.cpp)",
    "ring": "limit: bare SPSC ring in shared memory, 1024 slots, busy-spin, pinned",
    "memcpy": "limit: single-core memcpy",
    "cacheline": "limit: one cache line shared by two cores (busy-spin RT, contended fetch_add)",
    "futex": "limit: FUTEX_WAIT/FUTEX_WAKE ping-pong, i.e. one sleep + wake-up per hop",
    "pipe": "pipe(2), one write() per message",
    "socketpair": "AF_UNIX SOCK_STREAM socketpair, one write() per message",
    "posix_mq": "POSIX mq_send/mq_receive (maxmsg as the kernel allows, normally 10)",
    "boost": "Boost.Interprocess (message_queue cap 1024, interprocess_mutex, map + named_mutex)",
    "pthread": "robust process-shared pthread mutex",
    "posix": "raw system calls: shm_open+ftruncate/fstat+mmap, fork+_exit+waitpid",
    "python": "CPython multiprocessing, fork start method",
}


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    higher_is_better: bool
    systems: tuple  # peers expected to report (mpp not included)
    what: str
    mpp: bool = True  # mpp is expected to cover it
    # Measured in alternating rounds, one repetition of every program per round, instead of each
    # program's repetitions back to back: for workloads whose cost drifts with the host over
    # seconds or minutes more than the systems differ (see benchmarks/README.md).
    interleaved: bool = False


LIMITS = ("ring", "cacheline", "futex")

WORKLOADS = [
    # Pipe: one producer process -> one consumer process, timed at the consumer.
    Workload("pipe.8B.throughput", "msg/s", True, ("ring", "pipe", "socketpair", "python"),
             "8-byte messages (Python: small ints), 1 writer -> 1 reader"),
    Workload("pipe.1KiB.throughput", "msg/s", True, ("ring", "pipe", "socketpair", "python"),
             "1 KiB messages (Python: bytes objects), 1 writer -> 1 reader"),
    Workload("pipe.1MiB.throughput", "GB/s", True, ("pipe", "socketpair"),
             "1 MiB messages, 1 writer -> 1 reader"),
    Workload("pipe.8B.rtt", "µs", False, LIMITS + ("pipe", "socketpair", "python"),
             "8-byte ping-pong round trip through two channels, sides on cores 0 and 1"),
    Workload("pipe.8B.rtt.blocked", "µs", False, ("futex",),
             "pipe.8B.rtt with mpp's spinning turned off, so every hop sleeps and is woken"),
    # Queue: the same shapes through a bounded multi-producer queue (user space: 1024 slots).
    Workload("queue.8B.1p1c.throughput", "msg/s", True, ("ring", "boost", "posix_mq", "python"),
             "8-byte messages (Python: small ints), 1 producer -> 1 consumer", interleaved=True),
    Workload("queue.1KiB.1p1c.throughput", "msg/s", True, ("ring", "boost", "posix_mq", "python"),
             "1 KiB messages (Python: bytes objects), 1 producer -> 1 consumer",
             interleaved=True),
    Workload("queue.8B.2p2c.throughput", "msg/s", True, ("boost", "posix_mq", "python"),
             "8-byte messages, 2 producers -> 2 consumers, process i on core i mod 2",
             interleaved=True),
    Workload("queue.8B.rtt", "µs", False, LIMITS + ("boost", "posix_mq", "python"),
             "8-byte ping-pong round trip through two queues", interleaved=True),
    # wait: a wake-up through connection::wait (Python: multiprocessing.connection.wait).
    Workload("wait.rtt", "µs", False, ("python",),
             "8-byte ping-pong over a socket Pipe (raw bytes); before each receive a side blocks "
             "in wait() over its end and 99 idle connections", interleaved=True),
    Workload("wait.rtt.single", "µs", False, ("python",),
             "the same ping-pong with a plain blocking receive (what wait.rtt is read against)",
             interleaved=True),
    # Locks and values.
    Workload("lock.uncontended", "ns", False, ("boost", "pthread", "python"),
             "lock + unlock, one process"),
    Workload("lock.contended.2proc", "ops/s", True, ("boost", "pthread", "python"),
             "lock; ++x; unlock from 2 processes, total"),
    Workload("value.locked_increment.2proc", "ops/s", True, ("python",),
             "Value<int64>: with get_lock(): value += 1, from 2 processes, total"),
    Workload("value.fetch_add.2proc", "ops/s", True, ("cacheline",),
             "atomic fetch_add on one shared 64-bit value from 2 processes, total"),
    # Named shared memory and processes.
    Workload("shm.create.1MiB", "µs", False, ("posix", "python"),
             "create a 1 MiB named segment and map it", interleaved=True),
    Workload("shm.attach.1MiB", "µs", False, ("posix", "python"),
             "open an existing 1 MiB named segment and map it", interleaved=True),
    Workload("process.start", "µs", False, ("posix", "python"),
             "start a child that does nothing and wait for it"),
    # Manager: a shared dict / list (Boost: map<int,int> in a managed segment under named_mutex).
    Workload("dict.set.1proc", "ops/s", True, ("boost", "python"),
             "d[k] = v for new keys 0..n-1, one process (Python: a child, server on the other core)"),
    Workload("dict.get.1proc", "ops/s", True, ("boost", "python"),
             "d[k] for keys 0..n-1 set beforehand, one process"),
    Workload("dict.set.2proc", "ops/s", True, ("boost",),
             "d[k] = v for new disjoint keys from 2 processes, total"),
    Workload("dict.get.2proc", "ops/s", True, ("boost",),
             "d[k] for all n keys from each of 2 processes, total"),
    Workload("list.append.1proc", "ops/s", True, ("python",),
             "l.append(i), one process (Python: a child)"),
    # Pools.
    Workload("pool.map.1e6", "items/s", True, ("python",),
             "Pool(2).map(x + 1) over 10^6 ints (--quick: 10^5), default chunksize, pool started"),
    Workload("pool.startup", "ms", False, ("python",),
             "Pool(2) made, first map of 2 items, close, join"),
    Workload("futures.map.1e4", "items/s", True, ("python",),
             "ProcessPoolExecutor(2).map(x + 1) over 10^4 ints (--quick: 2000), executor started"),
    Workload("futures.wait.first_completed", "µs", False, ("python",),
             "ProcessPoolExecutor(2), one call sleeping 1 s: submit a no-op call, until "
             "wait([sleeper, it], FIRST_COMPLETED) returns (mean of 100)"),
    Workload("pool.mixed.makespan", "ms", False, ("python",),
             "Pool(2) started: apply_async of sleeps of 300, 50 and 150 ms, until all are done "
             "(ideal 300)"),
    Workload("pool.mixed.latency", "ms", False, ("python",),
             "the same three calls: mean time from submission to each one's callback "
             "(ideal (300 + 50 + 200) / 3 = 183)"),
    # Hardware limits; no mpp row expected.
    Workload("memcpy.64KiB", "GB/s", True, ("memcpy",), "memcpy of 64 KiB blocks, one core", mpp=False),
    Workload("memcpy.1MiB", "GB/s", True, ("memcpy",), "memcpy of 1 MiB blocks, one core", mpp=False),
    Workload("memcpy.64MiB", "GB/s", True, ("memcpy",), "memcpy of 64 MiB blocks, one core", mpp=False),
]

BY_NAME = {w.name: w for w in WORKLOADS}
