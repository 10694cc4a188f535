"""A VIP that goes and comes back with other backends (Kubernetes hands a freed pool address
to the next Service): real connections through the lab, not one reaches the old backends,
although those still serve another VIP (their pins in the flow table would stay valid).
With ClientIP affinity every new connection of a client that had one would follow it."""

from .helpers import DSR, flows, state

SAMPLE = 30         # connections per round


@DSR
def test_a_returning_vip_sends_old_flows_to_its_new_backends(lab, ports, family, mode):
    """Flows opened to the VIP on be1 and be2 (the same two also serve port 443); the VIP
    goes, then comes back on be3 alone: the same 5-tuples now land on be3."""
    other = lab.vip(family, mode=mode, port=443, backends=("be1", "be2"))
    old = lab.vip(family, mode=mode, backends=("be1", "be2"))
    lab.apply(state(old, other))
    sports = ports.take(SAMPLE)
    before = flows(lab, family, sports)
    assert set(before.values()) == {"be1", "be2"}
    lab.apply(state(other))
    lab.apply(state(lab.vip(family, mode=mode, backends=("be3",)), other))
    assert set(flows(lab, family, sports).values()) == {"be3"}


@DSR
def test_clientip_affinity_ends_with_its_vip(lab, ports, family, mode):
    """With ClientIP affinity the client's pin decides every new connection: after the
    VIP comes back on be3 alone, every new connection reaches be3."""
    other = lab.vip(family, mode=mode, port=443, backends=("be1", "be2"))
    sticky = lab.vip(family, mode=mode, backends=("be1", "be2"), affinity="client-ip")
    lab.apply(state(sticky, other))
    first = set(flows(lab, family, ports.take(3)).values())
    assert len(first) == 1 and first <= {"be1", "be2"}, "affinity: one backend"
    lab.apply(state(other))
    lab.apply(state(lab.vip(family, mode=mode, backends=("be3",), affinity="client-ip"),
                    other))
    assert set(flows(lab, family, ports.take(SAMPLE)).values()) == {"be3"}
