"""A netlink batch asks for one ACK a send (vsnetd/netlink.py): every failure must still
be answered at its own place, in any send of the batch, and nothing of a batch may be left
for the next request on the socket. Checked on the kernel's own view (``ip -j route``)."""

from __future__ import annotations

import errno
import select
import socket

import pytest

from tests.sandbox import ip_json
from vsnetd import netlink
from vsnetd.kinds import route
from vsnetd.kinds.route import RT_SCOPE_LINK, Route

pytestmark = pytest.mark.usefixtures("netns")

TABLE, PROTOCOL = 300, 250
LINKS = {"lo": 1}


def route_in_table(number: int) -> Route:
    """A distinct route per number (10.<hi>.<lo>.0/24 on lo), in TABLE."""
    return Route(socket.AF_INET, TABLE, f"10.{number >> 8}.{number & 255}.0/24", 0,
                 device="lo", scope=RT_SCOPE_LINK)


def add(obj: Route) -> tuple[int, int, bytes]:
    return route.request("add", obj, PROTOCOL, LINKS)  # NLM_F_EXCL: a second add fails


def kernel_routes() -> set[str]:
    return {entry["dst"] for entry in ip_json("route", "show", "table", str(TABLE))}


def test_each_failure_is_answered_at_its_place() -> None:
    with netlink.RtnlSocket() as sock:
        first = sock.batch([add(route_in_table(1))])
        # a failure in the middle, and one as the last request (the one asking for the ACK)
        replies = sock.batch([add(route_in_table(2)), add(route_in_table(1)),
                              add(route_in_table(3)), add(route_in_table(2))])
        assert [r.ok for r in first] == [True]
        assert [r.error for r in replies] == [0, -errno.EEXIST, 0, -errno.EEXIST]
        assert kernel_routes() == {"10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"}
        # nothing left behind on the socket (a dump would skip it, reading its own answer)
        assert select.select([sock.fileno()], [], [], 0)[0] == []


def test_a_batch_of_many_sends_keeps_every_answer_in_order() -> None:
    count = 3000  # ~60 bytes a request: three sends of at most netlink.MAX_BATCH_BYTES
    failing = {7, 1500, 2222, count - 1}  # each a second add of an earlier route
    requests = [add(route_in_table(index if index not in failing else index - 1))
                for index in range(count)]
    assert sum(len(body) + 16 for _t, _f, body in requests) > 2 * netlink.MAX_BATCH_BYTES
    with netlink.RtnlSocket() as sock:
        replies = sock.batch(requests)
        assert select.select([sock.fileno()], [], [], 0)[0] == []  # nothing left behind
    assert len(replies) == count
    assert {index for index, reply in enumerate(replies) if not reply.ok} == failing
    assert all(replies[index].error == -errno.EEXIST for index in failing)
    assert len(kernel_routes()) == count - len(failing)


def test_a_batch_across_the_wrap_of_sequence_numbers() -> None:
    """Sequence numbers wrap from 2**32 - 1 to 1 (0 is skipped): the answers keep their
    places across it."""
    with netlink.RtnlSocket() as sock:
        sock._seq = 0xFFFFFFFF - 2  # the batch's requests: 2**32 - 2, 2**32 - 1, 1, 2, 3
        replies = sock.batch([add(route_in_table(1)), add(route_in_table(2)),
                              add(route_in_table(1)), add(route_in_table(3)),
                              add(route_in_table(2))])
        assert select.select([sock.fileno()], [], [], 0)[0] == []  # nothing left behind
    assert [r.error for r in replies] == [0, 0, -errno.EEXIST, 0, -errno.EEXIST]
    assert kernel_routes() == {"10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"}


def test_an_abandoned_batch_leaves_the_socket_free() -> None:
    """A batch whose caller fails before its end (vsnetd/apply.py settles it): the send in
    flight on its own thread finishes, what was not sent never is, and the socket answers
    the next batch alone."""
    count = 2000  # two sends: the first goes out on a thread once the second begins
    with netlink.RtnlSocket() as sock:
        batch = netlink.Batch(sock)
        for index in range(count):
            batch.add(*add(route_in_table(index)))
        batch.settle()
        sent = kernel_routes()
        first = {route_in_table(index).destination for index in range(len(sent))}
        assert 0 < len(sent) < count and sent == first  # the first send, whole
        replies = sock.batch([add(route_in_table(count)), add(route_in_table(0))])
        assert [r.error for r in replies] == [0, -errno.EEXIST]
        assert select.select([sock.fileno()], [], [], 0)[0] == []  # nothing left behind


def test_a_dump_that_fails_says_so() -> None:
    """The kernel ends a dump that failed with its error in NLMSG_DONE (here: a table that
    does not exist, asked for with the kernel's filter): a failed dump is not an empty one,
    and the socket serves the next request."""
    with netlink.RtnlSocket() as sock:
        with pytest.raises(netlink.NetlinkError) as failed:
            sock.dump(route.dump_request(socket.AF_INET, 4321),
                      route.decoder({}, PROTOCOL, range(0)))
        assert failed.value.errno == errno.ENOENT
        assert route.observe(sock, socket.AF_INET, {}, PROTOCOL, range(0), only_table=4321) == []
        sock.batch([add(route_in_table(7))])
        assert [found.destination for found, owned in route.observe(
            sock, socket.AF_INET, {}, PROTOCOL, range(0), only_table=TABLE) if owned] == [
            "10.0.7.0/24"]
