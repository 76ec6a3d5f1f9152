"""The pid table and the run queues, the two sources beside the task list that the hunt
compares with it, on each kernel of the matrix (a paused guest: every source agrees)."""


def test_pid_table_names_every_thread(seen):
    vm, _ = seen
    result = vm.linux.pid_table()
    assert result.partial is None
    threads = {t.tid: t for t in vm.linux.threads().items}
    named = {e.pid: e for e in result.items if e.task}
    assert set(named) == set(threads)
    for tid, entry in named.items():
        assert (entry.tgid, entry.task) == (threads[tid].tgid, threads[tid].address), tid
        assert threads[tid].comm.startswith(entry.comm), tid  # a kworker's adds its queue


def test_run_queues_hold_the_busy_loop_and_only_real_threads(seen):
    vm, _ = seen
    result = vm.linux.runqueues()
    assert result.partial is None
    threads = {t.tid: t for t in vm.linux.threads().items}
    assert result.items and all(q.pid in threads and q.task == threads[q.pid].address
                                for q in result.items)
    busy = [p.pid for p in vm.linux.processes().items if "while :; do :; done" in p.cmdline]
    assert busy and busy[0] in {q.pid for q in result.items}  # always runnable: never asleep
    assert sum(q.running for q in result.items) <= len({q.cpu for q in result.items})
