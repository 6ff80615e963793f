"""Why the end of a stream is acknowledged, not lingered: the loss, reproduced with processes.

Opt-in (BOARDLENS_SLOW_TESTS=1, about 90 s): a publisher sends 65 messages of 3 MB and 'end'
to a consumer that holds 64 in its ZeroMQ queue and then pauses. Closed with a long linger,
the publisher exits at once (everything has reached the kernel); once its orphaned socket
has left FIN-WAIT-2 (tcp_fin_timeout, 60 s) the consumer's keepalive probe draws a reset and
the bytes still in the consumer's kernel buffer, 'end' among them, are gone. With
`Publisher.finish` the publisher waits for the consumer's confirmation and nothing is lost.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.services.helpers import free_ports

pytestmark = pytest.mark.skipif(os.environ.get("BOARDLENS_SLOW_TESTS") != "1",
                                reason="opt-in: BOARDLENS_SLOW_TESTS=1 (about 90 s)")

N_MESSAGES, PAUSE_S = 65, 75

_PUBLISHER = textwrap.dedent("""
    import sys, zmq
    from boardlens.protocol.transport import Publisher, TransportConfig
    endpoint, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pub = Publisher(endpoint, None, TransportConfig(sndhwm_msgs=64, rcvhwm_msgs=64))
    assert pub.wait_for_subscribers(1, 30)
    payload = bytearray(3_000_000)
    for i in range(n):
        pub.send([b"%d" % i, payload])
    if mode == "linger":
        pub.send([b"END"])
        pub.close(linger_ms=600_000)
    else:
        report = pub.finish([b"END"], "e", n, timeout_s=300)
        print("confirmed" if report.complete else "unconfirmed", flush=True)
        pub.close(linger_ms=0)
    zmq.Context.instance().term()
""")

_CONSUMER = textwrap.dedent("""
    import sys, time
    from boardlens.protocol.transport import Subscriber, TransportConfig
    endpoint, pause = sys.argv[1], float(sys.argv[2])
    cfg = TransportConfig(rcvhwm_msgs=64, tcp_keepalive_idle_s=1, tcp_keepalive_intvl_s=1)
    sub = Subscriber(endpoint, cfg=cfg)
    got, end = 0, False
    while (frames := sub.recv(10_000 if got else 30_000)) is not None:
        if bytes(frames[0]) == b"END":
            sub.confirm_end("e", got)
            end = True
            break
        got += 1
        if got == 1:
            time.sleep(pause)  # a trainer busy with the batches it already holds
    print(got, end, flush=True)
    time.sleep(1)  # let the confirmation leave
    sub.close()
""")


def _run_pair(mode: str, port: int) -> subprocess.Popen:
    endpoint = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    consumer = subprocess.Popen([sys.executable, "-c", _CONSUMER, endpoint, str(PAUSE_S)],
                                stdout=subprocess.PIPE, text=True, env=env)
    publisher = subprocess.Popen([sys.executable, "-c", _PUBLISHER, endpoint, mode, str(N_MESSAGES)],
                                 stdout=subprocess.PIPE, text=True, env=env)
    return consumer, publisher


@pytest.mark.timeout(240)
def test_a_linger_loses_the_tail_and_finish_does_not():
    linger_port, finish_port = free_ports(2)
    pairs = {"linger": _run_pair("linger", linger_port), "finish": _run_pair("finish", finish_port)}
    results = {}
    for mode, (consumer, publisher) in pairs.items():
        out, _ = consumer.communicate(timeout=200)
        pub_out, _ = publisher.communicate(timeout=30)
        got, end = out.split()
        results[mode] = (int(got), end == "True", pub_out.strip())
    # The lingering publisher had exited long before; the consumer got only its own queue.
    assert results["linger"][0] < N_MESSAGES and not results["linger"][1], results
    assert results["finish"] == (N_MESSAGES, True, "confirmed"), results
