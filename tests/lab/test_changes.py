"""Open connections across backend changes: the flow table keeps them on the backend that
accepted them when a backend is added, and on a backend that is draining.

An open connection here is a POST whose body is sent in two halves, the change applied in
between (helpers.HeldPost): the second half reaches the backend only if the LB still sends
the flow there, and the reply names the backend that read the whole body. Which backend
accepted a connection is read from the backends' own sockets, not from the LB."""

from .helpers import DSR, HeldPost, accepted_by, flows, held_posts, spread, state

HELD = 24       # open connections; ~1/3 of them are on any one backend


@DSR
def test_open_connections_survive_adding_a_backend(lab, ports, family, mode):
    """HELD connections are opened while be1 and be2 serve the VIP; be3 is added; every
    connection completes on the backend that accepted it. Without the flow table some
    would have moved: the same flows sent afresh through lb2 (which never saw them) go
    where the new ring sends them, and some of those go elsewhere."""
    lab.apply(state(lab.vip(family, mode=mode, backends=("be1", "be2"))))
    sports = ports.take(HELD)
    with held_posts(lab, family, sports) as posts:
        accepted = accepted_by(lab, family, sports)
        assert set(accepted.values()) == {"be1", "be2"}
        lab.apply(state(lab.vip(family, mode=mode)))
        served = {p.sport: p.finish() for p in posts}
    assert served == {p: (be, HeldPost.SIZE) for p, be in accepted.items()}

    lab.route_via("lb2")
    afresh = flows(lab, family, sports)
    moved = [p for p in sports if afresh[p] != accepted[p]]
    assert moved, "the new ring sends every one of these flows where it was: the test " \
                  "proves nothing; take more connections"


@DSR
def test_draining_backend_keeps_its_connections_and_gets_no_new_ones(lab, ports, family,
                                                                    mode):
    """HELD connections are opened across be1-be3; be2 is set to draining; every
    connection completes on the backend that accepted it, be2's included. Then 300 new
    connections: none reaches be2, both others get some."""
    lab.apply(state(lab.vip(family, mode=mode)))
    sports = ports.take(HELD)
    with held_posts(lab, family, sports) as posts:
        accepted = accepted_by(lab, family, sports)
        assert "be2" in accepted.values()
        draining = lab.vip(family, mode=mode).replace(backends=(
            lab.backend("be1", family), lab.backend("be2", family, state="draining"),
            lab.backend("be3", family)))
        lab.apply(state(draining))
        served = {p.sport: p.finish() for p in posts}
    assert served == {p: (be, HeldPost.SIZE) for p, be in accepted.items()}

    new = spread(flows(lab, family, ports.take(300)))
    assert new["be2"] == 0, f"new connections reached the draining backend: {new}"
    assert new["be1"] > 0 and new["be3"] > 0, new
