"""Connection limits the security review found broken, against real agent processes.

Every agent is a real ``modelforge-agent serve`` on a real Unix socket
(tests/agent_harness.py); hostile clients are real sockets in this process.
Verdicts are counts (file descriptors from /proc/PID/fd, memory from
/proc/PID/status) and answers, never durations.
"""

from __future__ import annotations

import os
import select
import socket
from contextlib import ExitStack

from agent_harness import (
    TIMEOUT,
    AgentWorkspace,
    Figures,
    connect,
    frame,
    linux_only,
    pack,
    vm_rss_kib,
    wait_until,
)
from modelforge_credentials import EncryptedFileStorage
from modelforge_credentials.client.sync import AgentClient

pytestmark = linux_only("/proc and SO_PEERCRED")

LIST = frame(pack({"v": 1, "id": 1, "op": "list"}))
GOOD_VALUE = "sk-limits-good-3f9a"


def store_names(agents: AgentWorkspace, count: int, key_length: int) -> int:
    """``count`` names (and the good credential) in the agent's file, before it starts;
    returns the size of a ``list`` reply's body."""
    names = {f"{i:05d}-" + "k" * (key_length - 6): "v" for i in range(count)}
    EncryptedFileStorage(agents.config).store_many({"bulk": names, "good": {"k": GOOD_VALUE}})
    pairs = [["bulk", key] for key in names] + [["good", "k"]]
    return len(pack({"id": 1, "ok": True, "items": pairs}))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def answered(sock: socket.socket) -> None:
    """Until the agent has sent ``sock`` something (read nothing: the peer never reads)."""
    readable, _, _ = select.select([sock], [], [], TIMEOUT)
    assert readable, "the agent sent nothing in time"


def good_client_works(agents: AgentWorkspace) -> bool:
    with AgentClient(agents.socket, timeout=10) as client:
        return client.hello()["protocol"] == 1 and client.retrieve("good", "k") == GOOD_VALUE


def test_evicted_non_reading_clients_release_their_descriptors(
    agents: AgentWorkspace, figures: Figures
) -> None:
    """70 clients pipeline ``list`` requests (about 1 MiB of replies each) and never
    read, against ``--max-connections 8``. Each new one evicts an old one, and an
    evicted connection must be gone at once, with its buffered replies: the agent's
    descriptors stay within the cap, and a legitimate client is still answered."""
    max_connections = 8
    reply_size = store_names(agents, 250, 240)
    requests = 1 + (1 << 20) // reply_size
    agent = agents.serve("--max-connections", str(max_connections))
    assert good_client_works(agents)
    baseline = fd_count(agent.pid)
    with ExitStack() as stack:
        peak = baseline
        for _ in range(70):
            hog = stack.enter_context(connect(agents.socket))
            hog.sendall(LIST * requests)
            answered(hog)
            peak = max(peak, fd_count(agent.pid))
        assert good_client_works(agents)
        after = fd_count(agent.pid)
        peak = max(peak, after)
    figures.record("list reply", reply_size // 1024, "KiB")
    figures.record("agent descriptors before", baseline)
    figures.record("agent descriptors, most seen during the flood", peak)
    figures.record("agent descriptors after the flood, hogs still open", after)
    # The listening socket and the rest are in the baseline. Once the flood is
    # in, at most the cap more; while a newcomer evicts an old connection, one
    # more (uvloop releases the victim's descriptor at the end of that loop
    # turn, after the newcomer was accepted).
    assert after <= baseline + max_connections, (baseline, after)
    assert peak <= baseline + max_connections + 1, (baseline, peak)


#: The documented bound on what one non-reading connection may cost the agent: replies
#: buffered up to the write high-water mark (256 KiB) plus the one reply that crossed it
#: (at most a frame, 1 MiB), plus allocator slack.
RSS_PER_CONNECTION_KIB = 3 * 1024
#: The rest: building one ``list`` reply, the interpreter's own caches.
RSS_FIXED_KIB = 16 * 1024


def test_non_reading_clients_buffer_a_bounded_amount_of_replies(
    agents: AgentWorkspace, figures: Figures
) -> None:
    """12 connections send 20 ``list`` requests each (under 8 KiB in all) whose
    replies are about 900 KiB, and never read: the agent must stop answering a
    connection once its unsent replies pass the high-water mark."""
    clients, per_client = 12, 20
    reply_size = store_names(agents, 3600, 240)
    agent = agents.serve()
    with AgentClient(agents.socket, timeout=TIMEOUT) as client:
        assert len(client.list_keys()) == 3601  # warm: the cache is complete
    assert good_client_works(agents)
    before = vm_rss_kib(agent.pid)
    with ExitStack() as stack:
        for _ in range(clients):
            hog = stack.enter_context(connect(agents.socket))
            hog.sendall(LIST * per_client)
            answered(hog)
        assert good_client_works(agents)
        samples = [vm_rss_kib(agent.pid)]

        def settled() -> bool:
            samples.append(vm_rss_kib(agent.pid))
            return samples[-1] == samples[-20:][0]

        wait_until(settled, TIMEOUT, "the agent's memory to settle")
        assert good_client_works(agents)
    growth = max(samples) - before
    bound = clients * RSS_PER_CONNECTION_KIB + RSS_FIXED_KIB
    figures.record("list reply", reply_size // 1024, "KiB")
    figures.record("bytes of requests sent", clients * per_client * len(LIST))
    figures.record("agent VmRSS before", before // 1024, "MiB")
    figures.record("agent VmRSS growth", growth / 1024, "MiB")
    assert growth <= bound, f"{growth // 1024} MiB grown, bound {bound // 1024} MiB"


def test_partial_frames_do_not_lock_out_a_client(agents: AgentWorkspace) -> None:
    """Against ``--max-connections 8``, five rounds of eight connections that each
    left a frame unfinished (one byte). A legitimate client is answered after every
    round, and the agent holds no more sockets than its cap."""
    max_connections = 8
    store_names(agents, 1, 10)
    agent = agents.serve("--max-connections", str(max_connections))
    baseline = fd_count(agent.pid)
    hello = frame(pack({"v": 1, "id": 1, "op": "hello"}))
    with ExitStack() as stack:
        for _ in range(5):
            for _ in range(max_connections - 1):
                partial = stack.enter_context(connect(agents.socket))
                partial.sendall(LIST[:1])
            # The last one also completes a frame first: its answer shows that the agent
            # has read the bytes sent before it (unread bytes would mean "working").
            last = stack.enter_context(connect(agents.socket))
            last.sendall(hello + LIST[:1])
            answered(last)
            assert good_client_works(agents)
        assert fd_count(agent.pid) <= baseline + max_connections
